import { describe, expect, test } from "bun:test";
import { NotDurableError } from "../../src/actors/errors.ts";
import type { ActorSystem } from "../../src/actors/system.ts";
import { counterKind, type CounterContext } from "../fixtures/counter.ts";
import { journalOf, rejectionOf, timersOf, useDb } from "../fixtures/harness.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

type Fired = CounterContext["fired"];

async function fired(system: ActorSystem, address: string): Promise<Fired> {
  return ((await system.inspect(address)).context as CounterContext).fired;
}

async function firedCount(system: ActorSystem, address: string, n: number, timeoutMs = 3_000): Promise<Fired> {
  let last: Fired = [];
  await eventually(async () => (last = await fired(system, address)).length >= n, timeoutMs, `${n} timer(s) of ${address} to fire`);
  return last;
}

for (const flavor of FLAVORS) {
  describe(`timers [${flavor}]`, () => {
    const ctx = useDb(flavor);

    test("a timer is persisted with its absolute deadline, fires at it, and its row goes away", async () => {
      const { system, store } = await ctx.boot([counterKind()]);
      const before = Date.now();
      await system.ask("counter/t", { type: "arm", key: "k", delayMs: 150 });
      const [armed] = await journalOf(store, "counter", "t");
      const due = armed!.at + 150;
      expect(await timersOf(store, "counter", "t")).toEqual([{ key: "k", due_at: due, event: { type: "alarm", key: "k", due } }]);
      const [f] = await firedCount(system, "counter/t", 1);
      expect(f!.key).toBe("k");
      expect(f!.due).toBe(due);
      expect(f!.at).toBeGreaterThanOrEqual(due);
      expect(f!.at - before).toBeLessThan(1_500);
      expect(await timersOf(store, "counter", "t")).toEqual([]);
      expect((await journalOf(store, "counter", "t")).map((r) => r.event.type)).toEqual(["arm", "alarm"]);
    });

    test("timers of one actor fire in deadline order", async () => {
      const { system } = await ctx.boot([counterKind()]);
      system.send("counter/o", { type: "arm", key: "a", delayMs: 150 });
      system.send("counter/o", { type: "arm", key: "b", delayMs: 50 });
      system.send("counter/o", { type: "arm", key: "c", delayMs: 100 });
      const got = await firedCount(system, "counter/o", 3);
      expect(got.map((f) => f.key)).toEqual(["b", "c", "a"]);
      for (const f of got) expect(f.at).toBeGreaterThanOrEqual(f.due);
    });

    test("a cancelled timer does not fire and its row is removed", async () => {
      const { system, store } = await ctx.boot([counterKind()]);
      system.send("counter/c", { type: "arm", key: "k", delayMs: 100 });
      system.send("counter/c", { type: "arm", key: "other", delayMs: 150 });
      await system.ask("counter/c", { type: "disarm", key: "k" });
      expect((await timersOf(store, "counter", "c")).map((t) => t.key)).toEqual(["other"]);
      const got = await firedCount(system, "counter/c", 1);
      await Bun.sleep(100);
      expect((await fired(system, "counter/c")).map((f) => f.key)).toEqual(["other"]);
      expect(got.map((f) => f.key)).toEqual(["other"]);
    });

    test("setting a timer again under the same key replaces it: only the new deadline fires", async () => {
      const { system, store } = await ctx.boot([counterKind()]);
      system.send("counter/r", { type: "arm", key: "k", delayMs: 80 });
      const second = await system.ask("counter/r", { type: "arm", key: "k", delayMs: 400 });
      const journal = await journalOf(store, "counter", "r");
      const due = journal[second.seq - 1]!.at + 400;
      expect(await timersOf(store, "counter", "r")).toMatchObject([{ key: "k", due_at: due }]);
      await Bun.sleep(200);
      expect(await fired(system, "counter/r")).toEqual([]);
      const got = await firedCount(system, "counter/r", 1);
      expect(got).toHaveLength(1);
      expect(got[0]!.due).toBe(due);
      expect(got[0]!.at).toBeGreaterThanOrEqual(due);
      // Setting it earlier than the pending deadline works too.
      system.send("counter/r", { type: "arm", key: "j", delayMs: 10_000 });
      await system.ask("counter/r", { type: "arm", key: "j", delayMs: 50 });
      const again = await firedCount(system, "counter/r", 2);
      expect(again.map((f) => f.key)).toEqual(["k", "j"]);
    });

    test("after a crash, a timer fires at its original deadline, not one reckoned from the restart", async () => {
      const kinds = [counterKind()];
      const first = await ctx.boot(kinds);
      await first.system.ask("counter/p", { type: "arm", key: "k", delayMs: 30_000 });
      const [row] = await timersOf(first.store, "counter", "p");
      const due = row!.due_at;
      await first.crash();

      // The new process's clock is ~29 s later: the deadline is a second away on it.
      const offset = due - Date.now() - 1_000;
      const second = await ctx.boot(kinds, { clock: () => Date.now() + offset });
      expect(second.started.timers).toBe(1);
      expect(await fired(second.system, "counter/p")).toEqual([]);
      const [f] = await firedCount(second.system, "counter/p", 1, 4_000);
      expect(f!.due).toBe(due);
      expect(f!.at).toBeGreaterThanOrEqual(due);
      expect(f!.at - due).toBeLessThan(1_500);
      expect(await timersOf(second.store, "counter", "p")).toEqual([]);
    });

    test("timers overdue at start fire at once, in deadline order", async () => {
      const kinds = [counterKind()];
      const first = await ctx.boot(kinds);
      await first.system.ask("counter/od", { type: "arm", key: "a", delayMs: 20_000 });
      await first.system.ask("counter/od", { type: "arm", key: "b", delayMs: 10_000 });
      await first.system.ask("counter/od", { type: "arm", key: "c", delayMs: 15_000 });
      await first.system.ask("counter/od", { type: "arm", key: "late", delayMs: 120_000 });
      const dues = Object.fromEntries((await timersOf(first.store, "counter", "od")).map((t) => [t.key, t.due_at]));
      await first.crash();

      const second = await ctx.boot(kinds, { clock: () => Date.now() + 60_000 });
      expect(second.started.timers).toBe(4);
      const got = await firedCount(second.system, "counter/od", 3, 2_000);
      expect(got.map((f) => f.key)).toEqual(["b", "c", "a"]);
      expect(got.map((f) => f.due)).toEqual([dues.b!, dues.c!, dues.a!]);
      for (const f of got) expect(f.at).toBeGreaterThanOrEqual(f.due);
      expect((await timersOf(second.store, "counter", "od")).map((t) => t.key)).toEqual(["late"]);
    });

    test("an overdue timer of a passive actor brings it back at start", async () => {
      const kinds = [counterKind()];
      const first = await ctx.boot(kinds);
      await first.system.ask("counter/sleepy", { type: "arm", key: "k", delayMs: 5_000 });
      await first.stop(); // snapshotted as passive: not recovered eagerly

      const second = await ctx.boot(kinds, { clock: () => Date.now() + 60_000 });
      expect(second.started.recovered).toBe(0);
      const got = await firedCount(second.system, "counter/sleepy", 1, 2_000);
      expect(got.map((f) => f.key)).toEqual(["k"]);
    });

    test("a cancelled timer stays cancelled across a crash; a fired one does not fire again", async () => {
      const kinds = [counterKind()];
      const first = await ctx.boot(kinds);
      await first.system.ask("counter/x", { type: "arm", key: "gone", delayMs: 5_000 });
      await first.system.ask("counter/x", { type: "disarm", key: "gone" });
      await first.system.ask("counter/x", { type: "arm", key: "done", delayMs: 30 });
      await firedCount(first.system, "counter/x", 1);
      await first.crash();

      const second = await ctx.boot(kinds, { clock: () => Date.now() + 60_000 });
      expect(second.started.timers).toBe(0);
      await Bun.sleep(150);
      expect((await fired(second.system, "counter/x")).map((f) => f.key)).toEqual(["done"]);
    });

    test("a timer wakes its passivated actor", async () => {
      const { system } = await ctx.boot([counterKind({ idleMs: 40 })], { sweepMs: 10 });
      await system.ask("counter/w", { type: "arm", key: "k", delayMs: 400 });
      await eventually(() => !system.isResident("counter/w"), 1_000, "the actor to be passivated");
      await eventually(() => system.isResident("counter/w"), 2_000, "the timer to bring it back");
      const got = await firedCount(system, "counter/w", 1);
      expect(got.map((f) => f.key)).toEqual(["k"]);
    });

    test("a stale firing (the timer was set again while its firing waited in the mailbox) is dropped", async () => {
      const { system, store } = await ctx.boot([counterKind({ backoffBaseMs: 300 })]);
      // All in one tick: the arm is accepted, the boom restarts the actor for 300 ms with the
      // re-arm queued, and meanwhile the old deadline fires into the mailbox behind it.
      system.send("counter/s", { type: "arm", key: "k", delayMs: 60 });
      const boom = system.ask("counter/s", { type: "boom" });
      const rearm = system.ask("counter/s", { type: "arm", key: "k", delayMs: 10_000 });
      await boom.catch(() => {});
      await rearm;
      await Bun.sleep(100);
      expect(await fired(system, "counter/s")).toEqual([]);
      expect((await journalOf(store, "counter", "s")).map((r) => r.event.type)).toEqual(["arm", "arm"]);
      const [row] = await timersOf(store, "counter", "s");
      expect(row!.due_at).toBe((await journalOf(store, "counter", "s"))[1]!.at + 10_000);
    });

    test("a timer set by an event whose commit failed never fires", async () => {
      const { system, store } = await ctx.boot([counterKind({ backoffBaseMs: 5 })]);
      await system.ask("counter/nf", { type: "add", n: 1 });
      store.failNext();
      expect(await rejectionOf(system.ask("counter/nf", { type: "arm", key: "k", delayMs: 60 }))).toBeInstanceOf(NotDurableError);
      await Bun.sleep(250);
      // (An event, not inspect, to read the state: see the durability test on inspect after a failed commit.)
      const after = await system.ask("counter/nf", { type: "add", n: 1 });
      expect((after.context as CounterContext).fired).toEqual([]);
      expect(await timersOf(store, "counter", "nf")).toEqual([]);
      expect((await journalOf(store, "counter", "nf")).map((r) => r.event.type)).toEqual(["add", "add"]);
    });

    test("a timer that comes due while its actor's mailbox is full still fires once there is room", async () => {
      const { system, store } = await ctx.boot([counterKind({ mailboxLimit: 2 })]);
      await system.inspect("counter/mf");
      store.hold(); // the arm and one more event in flight fill the mailbox
      const busy = [system.ask("counter/mf", { type: "arm", key: "k", delayMs: 150 }), system.ask("counter/mf", { type: "add", n: 1 })];
      await Bun.sleep(300); // the deadline passes while the mailbox is full
      store.release();
      await Promise.all(busy);
      const got = await firedCount(system, "counter/mf", 1, 2_000);
      expect(got.map((f) => f.key)).toEqual(["k"]);
    });

    test("a timer that came due while its actor was failed fires after revive", async () => {
      const { system, store } = await ctx.boot([counterKind({ maxRestarts: 0 })]);
      system.send("counter/rv", { type: "arm", key: "k", delayMs: 150 });
      await system.ask("counter/rv", { type: "boom" }).catch(() => {});
      await eventually(() => system.failedActors().length === 1, 1_000, "the actor to be failed");
      await Bun.sleep(300); // the deadline passes while it is failed
      expect(await timersOf(store, "counter", "rv")).toHaveLength(1); // still durable
      await system.revive("counter/rv");
      await system.inspect("counter/rv");
      const got = await firedCount(system, "counter/rv", 1, 2_000);
      expect(got.map((f) => f.key)).toEqual(["k"]);
    });
  });
}
