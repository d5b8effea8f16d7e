import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import net from "node:net";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { sseReader, wsReader } from "../helpers/room-client.ts";
import { FLAVORS } from "../helpers/stores.ts";

/** Rooms (R1, R2, R5, bad input): members, messages, history then live over SSE and WebSocket. */
for (const flavor of FLAVORS) {
  describe(`rooms (${flavor})`, () => {
    let app: TestApp;
    let alice: Awaited<ReturnType<TestApp["user"]>>;
    let bob: Awaited<ReturnType<TestApp["user"]>>;
    let eve: Awaited<ReturnType<TestApp["user"]>>;
    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_ROOM_HEARTBEAT_MS: "200", TETHER_ROOM_SUBSCRIBER_BUFFER_BYTES: String(256 * 1024) } });
      [alice, bob, eve] = [await app.user("technician"), await app.user("technician"), await app.user("technician")];
    });
    afterAll(async () => app?.close());

    const room = async (name = "team", policy: Record<string, boolean> = {}) => {
      const r = await app.call("POST", "/api/rooms", { token: alice.token, body: { name, policy } });
      expect(r.status).toBe(201);
      return r.body.id as string;
    };
    const post = (id: string, token: string, body: Record<string, unknown>) => app.call("POST", `/api/rooms/${id}/messages`, { token, body });

    test("create, members with roles; only members read or post (403); owners manage members", async () => {
      const id = await room("ops", { persist: true });
      const created = await app.call("GET", `/api/rooms/${id}`, { token: alice.token });
      expect(created.body).toMatchObject({ id, name: "ops", kind: "team", policy: { persist: true, sign: false, encrypt: false }, role: "owner" });
      expect(created.body.members).toEqual([expect.objectContaining({ member: alice.id, user_id: alice.id, role: "owner" })]);

      expect((await app.call("GET", `/api/rooms/${id}`, { token: bob.token })).status).toBe(403);
      expect((await post(id, bob.token, { body: "let me in" })).status).toBe(403);
      expect((await app.call("GET", `/api/rooms/${id}/messages`, { token: bob.token })).status).toBe(403);
      expect((await app.call("GET", `/api/rooms/${id}/stream`, { token: bob.token })).status).toBe(403);

      const added = await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: bob.id } });
      expect(added.status).toBe(201);
      expect(added.body.members.map((m: any) => [m.member, m.role])).toEqual([[alice.id, "owner"], [bob.id, "member"]]);
      // A member is not an owner: cannot add or remove others.
      expect((await app.call("POST", `/api/rooms/${id}/members`, { token: bob.token, body: { user_id: eve.id } })).body.error_code).toBe("NOT_AN_OWNER");
      expect((await app.call("DELETE", `/api/rooms/${id}/members/${alice.id}`, { token: bob.token })).status).toBe(403);
      expect((await post(id, bob.token, { body: "hi" })).status).toBe(201);

      const mine = await app.call("GET", "/api/rooms", { token: bob.token });
      expect(mine.body.rooms.map((r: any) => r.id)).toContain(id);
      expect((await app.call("GET", "/api/rooms", { token: eve.token })).body.rooms.map((r: any) => r.id)).not.toContain(id);

      // Leaving is allowed; then reading is refused again.
      expect((await app.call("DELETE", `/api/rooms/${id}/members/${bob.id}`, { token: bob.token })).status).toBe(204);
      expect((await app.call("GET", `/api/rooms/${id}/messages`, { token: bob.token })).status).toBe(403);
      // The last owner of a room with others cannot be removed.
      await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: eve.id } });
      expect((await app.call("DELETE", `/api/rooms/${id}/members/${alice.id}`, { token: alice.token })).body.error_code).toBe("LAST_OWNER");

      const audit = await app.call("GET", `/api/audit?target_id=${id}&limit=50`, { token: app.adminToken });
      expect(audit.body.events?.map((e: any) => e.type) ?? audit.body.entries?.map((e: any) => e.type)).toEqual(expect.arrayContaining(["room.created", "room.member_added", "room.member_removed"]));
    });

    test("messages get ULID ids in order; client_id makes a post idempotent; history pages with after", async () => {
      const id = await room();
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await post(id, alice.token, { body: `m${i}` });
        expect(r.status).toBe(201);
        expect(r.body).toMatchObject({ room_id: id, sender: alice.id, sender_name: alice.username, body: `m${i}`, signature: null });
        ids.push(r.body.id);
      }
      expect([...ids].sort()).toEqual(ids);
      const first = await post(id, alice.token, { body: "once", client_id: "c-1" });
      const again = await post(id, alice.token, { body: "once", client_id: "c-1" });
      expect([first.status, again.status]).toEqual([201, 200]);
      expect(again.body.id).toBe(first.body.id);
      const page1 = await app.call("GET", `/api/rooms/${id}/messages?limit=3`, { token: alice.token });
      const page2 = await app.call("GET", `/api/rooms/${id}/messages?after=${page1.body.messages.at(-1).id}&limit=10`, { token: alice.token });
      expect([...page1.body.messages, ...page2.body.messages].map((m: any) => m.body)).toEqual(["m0", "m1", "m2", "m3", "m4", "once"]);
    });

    test("bad input: oversized bodies, unknown rooms, malformed ids, forged Last-Event-IDs; nothing stored", async () => {
      const id = await room();
      expect((await post(id, alice.token, { body: "x".repeat(17 * 1024) })).status).toBe(413);
      expect((await post(id, alice.token, { body: "é".repeat(9 * 1024) })).status).toBe(413); // 18 KiB of UTF-8
      expect((await post(id, alice.token, { body: "" })).status).toBe(400);
      expect((await post(id, alice.token, { body: "ok", client_id: "has space" })).status).toBe(400);
      expect((await post(crypto.randomUUID(), alice.token, { body: "hi" })).body.error_code).toBe("ROOM_NOT_FOUND");
      expect((await app.call("GET", `/api/rooms/not-a-uuid/messages`, { token: alice.token })).status).toBe(400);
      expect((await app.call("POST", "/api/rooms", { token: alice.token, body: { name: "" } })).status).toBe(400);
      const bad = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token, { lastEventId: "not-a-ulid" });
      expect([bad.status, JSON.parse(bad.body).error_code]).toEqual([400, "INVALID_EVENT_ID"]);
      const forged = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token, { lastEventId: "01ARZ3NDEKTSV4RRFFQ69G5FAV" });
      expect([forged.status, JSON.parse(forged.body).error_code]).toEqual([404, "EVENT_NOT_FOUND"]);
      // Another room's message id is forged here too.
      const other = await room();
      const elsewhere = (await post(other, alice.token, { body: "elsewhere" })).body.id;
      expect((await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token, { after: elsewhere })).status).toBe(404);
      expect((await app.call("GET", `/api/rooms/${id}/messages`, { token: alice.token })).body.messages).toEqual([]);
    });

    test("SSE: history then live, id on every message, heartbeats, Last-Event-ID resumes exactly", async () => {
      const id = await room();
      const before: string[] = [];
      for (let i = 0; i < 3; i++) before.push((await post(id, alice.token, { body: `h${i}` })).body.id);
      const s = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token);
      expect(s.status).toBe(200);
      await s.waitFor(() => s.live, 5_000, "live");
      const after: string[] = [];
      for (let i = 0; i < 3; i++) after.push((await post(id, alice.token, { body: `l${i}` })).body.id);
      await s.waitFor(() => s.ids.length === 6, 5_000, "six messages");
      expect(s.ids).toEqual([...before, ...after]);
      const liveEvent = s.events.find((e) => e.event === "live")!;
      expect(JSON.parse(liveEvent.data)).toEqual({ t: "live", after: before[2] });
      expect(JSON.parse(s.events.find((e) => e.id === after[0])!.data)).toMatchObject({ body: "l0", sender: alice.id });
      s.stop();

      const resumed = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token, { lastEventId: after[0] });
      await resumed.waitFor(() => resumed.live, 5_000, "live");
      expect(resumed.ids).toEqual(after.slice(1));
      resumed.stop();

      // Heartbeats are comments: read the raw bytes for a while with nothing posted.
      const raw = await fetch(`${app.url}/api/rooms/${id}/stream`, { headers: { authorization: `Bearer ${alice.token}` } });
      expect(raw.headers.get("content-type")).toContain("text/event-stream");
      const reader = raw.body!.getReader();
      let text = "";
      const until = Date.now() + 3_000;
      while (!text.includes(": ping") && Date.now() < until) text += new TextDecoder().decode((await reader.read()).value);
      expect(text).toStartWith(": connected");
      expect(text).toContain(": ping");
      await reader.cancel();
    });

    test("subscribers joining while messages are posted concurrently see every message once, in order (SSE and WebSocket, with reconnects)", async () => {
      const id = await room();
      const posted: string[] = [];
      let posting = true;
      const writers = [alice, alice, alice].map(async (u, w) => {
        for (let i = 0; posting && i < 400; i++) {
          const r = await post(id, u.token, { body: `w${w}-${i}` });
          if (r.status !== 201) throw new Error(`post failed ${r.status}`);
          posted.push(r.body.id);
        }
      });
      const readers: Array<{ ids: string[]; stop(): void }> = [];
      // Join at staggered moments; one SSE reader drops and resumes from its last id, twice.
      const joined = (async () => {
        for (let i = 0; i < 4; i++) {
          await Bun.sleep(40);
          readers.push(i % 2 === 0 ? await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token) : await wsReader(`${app.url.replace(/^http/, "ws")}/ws/rooms/${id}`, alice.token));
        }
        const resumed: string[] = [];
        for (let round = 0; round < 3; round++) {
          const r = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token, { lastEventId: resumed.at(-1) });
          await Bun.sleep(60);
          r.stop();
          await r.closed;
          resumed.push(...r.ids);
        }
        const last = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token, { lastEventId: resumed.at(-1) });
        readers.push({ get ids() { return [...resumed, ...last.ids]; }, stop: () => last.stop() });
      })();
      await joined;
      posting = false;
      await Promise.all(writers);
      const all = (await app.call("GET", `/api/rooms/${id}/messages?limit=1000`, { token: alice.token })).body.messages.map((m: any) => m.id);
      expect(all.length).toBe(posted.length);
      expect([...posted].sort()).toEqual(all);
      const deadline = Date.now() + 10_000;
      while (readers.some((r) => r.ids.length < all.length) && Date.now() < deadline) await Bun.sleep(20);
      for (const r of readers) {
        expect(r.ids.length).toBe(all.length);
        expect(r.ids).toEqual(all); // every message, once, in id order
        r.stop();
      }
    });

    test("removing a member ends their live stream with a reason (4301 / event: closed)", async () => {
      const id = await room();
      await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: bob.id } });
      const ws = await wsReader(`${app.url.replace(/^http/, "ws")}/ws/rooms/${id}`, bob.token);
      const sse = await sseReader(`${app.url}/api/rooms/${id}/stream`, bob.token);
      await ws.waitFor(() => ws.live && sse.live, 5_000, "live");
      expect((await app.call("DELETE", `/api/rooms/${id}/members/${bob.id}`, { token: alice.token })).status).toBe(204);
      expect((await ws.closed).code).toBe(4301);
      expect(await sse.closed).toEqual({ code: 4301, reason: "not_a_member" });
    });

    test("a slow subscriber is dropped with a reason and resumes; the room and other subscribers are not held back", async () => {
      const id = await room();
      const fast = await wsReader(`${app.url.replace(/^http/, "ws")}/ws/rooms/${id}`, alice.token);
      // A raw socket that sends the SSE request and then never reads (kernel buffers fill first: ~5 MB on loopback).
      const stalled = net.connect(Number(new URL(app.url).port), "127.0.0.1", () => {
        stalled.write(`GET /api/rooms/${id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${alice.token}\r\n\r\n`);
        stalled.pause();
      });
      await fast.waitFor(() => fast.live, 5_000, "live");
      const body = "y".repeat(15 * 1024);
      const started = performance.now();
      const ids: string[] = [];
      for (let i = 0; i < 600; i++) ids.push((await post(id, alice.token, { body })).body.id);
      const postMs = performance.now() - started;
      await fast.waitFor(() => fast.ids.length === 600, 10_000, "the fast subscriber's messages");
      expect(fast.ids).toEqual(ids);
      expect(app.server.rooms.hub.stats.dropped).toBeGreaterThanOrEqual(1);
      expect(app.server.rooms.hub.subscribers(id)).toBe(1); // only the fast one is left
      expect(postMs).toBeLessThan(30_000);
      stalled.destroy();
      // It resumes after the last id it had: here, from the start, and gets everything.
      const back = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token);
      await back.waitFor(() => back.live, 10_000, "live");
      expect(back.ids).toEqual(ids);
      back.stop();
      fast.stop();
    });

    test("a room without persisted history streams live only, and resumes from its in-memory window", async () => {
      const id = await room("ephemeral", { persist: false });
      const s = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token);
      await s.waitFor(() => s.live, 5_000, "live");
      const a = (await post(id, alice.token, { body: "a" })).body.id;
      const b = (await post(id, alice.token, { body: "b" })).body.id;
      await s.waitFor(() => s.ids.length === 2, 5_000, "two");
      s.stop();
      expect((await app.call("GET", `/api/rooms/${id}/messages`, { token: alice.token })).body.messages).toEqual([]);
      const r = await sseReader(`${app.url}/api/rooms/${id}/stream`, alice.token, { lastEventId: a });
      await r.waitFor(() => r.live, 5_000, "live");
      expect(r.ids).toEqual([b]);
      r.stop();
    });
  });
}
