import { afterAll, describe, expect, test } from "bun:test";
import { callServer, dbEnv, spawnServer, type ServerProcess } from "../helpers/process.ts";
import { sseReader } from "../helpers/room-client.ts";
import { createTestDb, FLAVORS, type TestDb } from "../helpers/stores.ts";

/**
 * R2 against a real process: posters keep posting to a room, the server is SIGKILLed at a
 * random moment, and after the restart every message whose post was acknowledged is there,
 * once, in order, and a stream resumes from the last id a subscriber had.
 */
const PASSWORD = "rooms kill test password";
const POSTERS = 6;


for (const flavor of FLAVORS) {
  describe(`rooms under kill -9 (${flavor})`, () => {
    let db: TestDb;
    let server: ServerProcess | null = null;
    afterAll(async () => {
      if (server?.proc.exitCode === null) await server.kill();
      await db?.destroy();
    });

    test("every acknowledged message survives SIGKILL; a retried post with its client_id is stored once; streams resume exactly", async () => {
      db = await createTestDb(flavor);
      const env = { ...dbEnv(db.config), TETHER_ADMIN_PASSWORD: PASSWORD };
      server = await spawnServer("src/main.ts", env);
      const login = async () => (await callServer(server!.url, "POST", "/api/auth/login", null, { username: "admin", password: PASSWORD })).body.token as string;
      let token = await login();
      const room = (await callServer(server.url, "POST", "/api/rooms", token, { name: "durable" })).body.id as string;

      const acked = new Map<string, string>(); // client_id → message id
      const sent = new Set<string>();
      for (let round = 0; round < 2; round++) {
        const reader = await sseReader(`${server.url}/api/rooms/${room}/stream`, token);
        await reader.waitFor(() => reader.live, 10_000, "live");
        const stop = { now: false };
        const url = server.url;
        const posters = Array.from({ length: POSTERS }, async (_, p) => {
          for (let i = 0; !stop.now; i++) {
            const clientId = `r${round}-p${p}-${i}`;
            sent.add(clientId);
            try {
              const r = await callServer(url, "POST", `/api/rooms/${room}/messages`, token, { body: `message ${clientId}`, client_id: clientId });
              if (r.status === 201) acked.set(clientId, r.body.id);
            } catch {
              return; // the server died under this post
            }
          }
        });
        await Bun.sleep(300 + Math.floor(Math.random() * 700));
        expect(await server.kill("SIGKILL")).not.toBe(0);
        stop.now = true;
        await Promise.all(posters);
        reader.stop();
        const seenBeforeKill = [...reader.ids];

        server = await spawnServer("src/main.ts", env);
        token = await login();
        const stored = new Map<string, string>();
        for (let after: string | null = null; ;) {
          const page = await callServer(server.url, "GET", `/api/rooms/${room}/messages?limit=1000${after ? `&after=${after}` : ""}`, token);
          for (const m of page.body.messages) stored.set(m.client_id, m.id);
          if (page.body.messages.length < 1000) break;
          after = page.body.messages.at(-1).id;
        }
        for (const [clientId, id] of acked) expect(stored.get(clientId)).toBe(id);
        for (const clientId of stored.keys()) expect(sent.has(clientId)).toBe(true);
        expect(acked.size).toBeGreaterThan(0);

        // Retrying every acknowledged post stores nothing new.
        const some = [...acked].slice(0, 20);
        for (const [clientId, id] of some) {
          const again = await callServer(server.url, "POST", `/api/rooms/${room}/messages`, token, { body: `message ${clientId}`, client_id: clientId });
          expect([again.status, again.body.id]).toEqual([200, id]);
        }

        // The subscriber that was cut off resumes from the last id it had: it gets exactly the rest.
        const ordered = [...stored.values()].sort();
        if (seenBeforeKill.length > 0) {
          const resumed = await sseReader(`${server.url}/api/rooms/${room}/stream`, token, { lastEventId: seenBeforeKill.at(-1) });
          await resumed.waitFor(() => resumed.live, 10_000, "live after resume");
          expect([...seenBeforeKill, ...resumed.ids]).toEqual(ordered);
          resumed.stop();
        }
      }
    });
  });
}
