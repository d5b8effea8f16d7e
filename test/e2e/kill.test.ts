import { afterAll, describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import type { CounterContext } from "../fixtures/counter.ts";
import { dbEnv, spawnServer, type ServerProcess } from "../helpers/process.ts";
import { createTestDb, eventually, FLAVORS, type TestDb } from "../helpers/stores.ts";

/**
 * P3/P4/P9 against a real process: stream events at it, SIGKILL it at several moments
 * (including inside a group commit), restart it, and check that every acknowledged event is
 * in the recovered state, nothing unacknowledged was invented, and timers fire on time.
 */
const FIXTURE = "test/fixtures/counter-server.ts";
const ACTORS = 12;

for (const flavor of FLAVORS) {
  describe(`kill -9 (${flavor})`, () => {
    let db: TestDb;
    let server: ServerProcess | null = null;
    afterAll(async () => {
      if (server?.proc.exitCode === null) await server.kill();
      await db?.destroy();
    });

    test("acknowledged events and timers survive SIGKILL at random moments and mid-commit", async () => {
      db = await createTestDb(flavor);
      const env = dbEnv(db.config);
      const acked = new Array<number>(ACTORS).fill(0); // highest count the server acknowledged
      const sent = new Array<number>(ACTORS).fill(0); // events sent, acknowledged or not

      server = await spawnServer(FIXTURE, env);
      // A timer that comes due while the process is dead (overdue at restart), and one that
      // comes due after the restarts (must fire at its original deadline, not re-armed).
      await post(server.url, "/counter/timers/arm", { key: "overdue", delayMs: 600 });
      await post(server.url, "/counter/timers/arm", { key: "later", delayMs: 7_000 });

      const rounds: Array<{ killAt: "random" | "in-commit" }> = [{ killAt: "random" }, { killAt: "in-commit" }, { killAt: "random" }];
      for (const [i, round] of rounds.entries()) {
        if (round.killAt === "in-commit") {
          await server.kill("SIGTERM"); // restart with the hang armed, after a clean stop
          server = await spawnServer(FIXTURE, { ...env, KILL_IN_COMMIT_AFTER: "25" });
        }
        const stop = { now: false };
        const load = Array.from({ length: ACTORS }, (_, a) => pump(server!.url, a, acked, sent, stop));
        if (round.killAt === "in-commit") await server.waitForLine(/^IN_COMMIT$/, 20_000);
        else await Bun.sleep(300 + Math.floor(Math.random() * 700));
        const exit = await server.kill("SIGKILL");
        stop.now = true;
        await Promise.all(load);
        expect(exit).not.toBe(0);
        expect(acked.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);

        if (i === 0) await Bun.sleep(700); // let the "overdue" timer come due while down
        server = await spawnServer(FIXTURE, env);
        for (let a = 0; a < ACTORS; a++) {
          const ctx = await get<CounterContext>(server.url, `/counter/c${a}`);
          // Every acknowledged event is there; nothing beyond what was sent.
          expect(ctx.count).toBeGreaterThanOrEqual(acked[a]!);
          expect(ctx.count).toBeLessThanOrEqual(sent[a]!);
          // Continue from what the server has: the next acknowledged count follows it.
          acked[a] = ctx.count;
          sent[a] = ctx.count;
        }
      }

      // The overdue timer fired at once after the first restart, the other at its deadline.
      await eventually(async () => (await get<CounterContext>(server!.url, "/counter/timers")).fired.length === 2, 15_000, "both timers to fire");
      const fired = (await get<CounterContext>(server.url, "/counter/timers")).fired;
      const overdue = fired.find((f) => f.key === "overdue")!;
      const later = fired.find((f) => f.key === "later")!;
      expect(overdue.at).toBeGreaterThanOrEqual(overdue.due);
      expect(later.at).toBeGreaterThanOrEqual(later.due);
      expect(later.at - later.due).toBeLessThan(1_000);
      expect(fired.map((f) => f.key)).toEqual(["overdue", "later"]);

      // The journal that survived all of that replays into every stored snapshot exactly.
      await server.kill("SIGTERM");
      server = null;
      const replay = Bun.spawnSync([process.execPath, "src/cli/replay.ts", "counter/c0", "--verify", "--kinds", resolve(FIXTURE)], {
        cwd: resolve(import.meta.dir, "..", ".."),
        env: { ...process.env, ...env },
      });
      const out = replay.stdout.toString();
      expect(out).toContain("OK:");
      expect(replay.exitCode).toBe(0);
      expect(Number(out.match(/(\d+) snapshots checked/)?.[1])).toBeGreaterThan(0);
    }, 120_000);
  });
}

/** One actor's client: sequential adds, recording what the server acknowledged. */
async function pump(url: string, a: number, acked: number[], sent: number[], stop: { now: boolean }): Promise<void> {
  while (!stop.now) {
    sent[a]!++;
    try {
      const res = await fetch(`${url}/counter/c${a}/add`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ n: 1 }) });
      if (!res.ok) return;
      acked[a] = Number(await res.text());
    } catch {
      return; // the process died under us: this event is unacknowledged
    }
  }
}

async function post(url: string, path: string, body: unknown): Promise<unknown> {
  const res = await fetch(url + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

async function get<T>(url: string, path: string): Promise<T> {
  const res = await fetch(url + path);
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}
