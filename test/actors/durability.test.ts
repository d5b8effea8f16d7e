import { describe, expect, test } from "bun:test";
import { NotDurableError } from "../../src/actors/errors.ts";
import type { CommitStats } from "../../src/actors/journal.ts";
import type { KindDefinition } from "../../src/actors/types.ts";
import { counterKind, type CounterContext } from "../fixtures/counter.ts";
import { isSettled, journalOf, rejectionOf, rows, snapshotsOf, statusOf, useDb, type Node } from "../fixtures/harness.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

const count = (context: unknown) => (context as CounterContext).count;

for (const flavor of FLAVORS) {
  describe(`durability [${flavor}]`, () => {
    const ctx = useDb(flavor);

    test("output gate: reply, send and kind effects wait for the commit of the event", async () => {
      const notified: Array<{ count: unknown; committed: number; journaled: number[] }> = [];
      let node!: Node;
      const kind: KindDefinition = {
        ...counterKind(),
        effects: {
          notify: async (effect) => {
            const committed = node.store.commits;
            const journaled = (await journalOf(node.store, "counter", "g")).map((r) => r.seq);
            notified.push({ count: (effect as { count?: unknown }).count, committed, journaled });
          },
        },
      };
      node = await ctx.boot([kind]);
      const { system, store } = node;
      await system.ask("counter/g", { type: "add", n: 1 });
      const committedBefore = store.commits;

      store.hold();
      const add = system.ask<number>("counter/g", { type: "add", n: 2 });
      const notify = system.ask("counter/g", { type: "notify" });
      const tell = system.ask("counter/g", { type: "tell", to: "counter/h", n: 5 });
      await eventually(() => store.waiting === 1, 3_000, "the commit to reach the hold point");
      // The writes are in the open transaction; nothing may be visible to anyone yet.
      expect(await isSettled(Promise.race([add, notify, tell]), 100)).toBe(false);
      expect(notified).toEqual([]);
      expect(system.isResident("counter/h")).toBe(false); // the send effect has not run
      if (flavor === "postgres") {
        // Another connection does not see the uncommitted journal rows.
        expect((await journalOf(store, "counter", "g")).map((r) => r.seq)).toEqual([1]);
      }

      store.release();
      expect((await add).reply).toBe(3);
      await Promise.all([notify, tell]);
      await eventually(() => notified.length === 1, 2_000, "the notify handler");
      expect(notified[0]!.count).toBe(3);
      expect(notified[0]!.committed).toBe(committedBefore + 1);
      expect(notified[0]!.journaled).toEqual([1, 2, 3, 4]);
      await eventually(async () => count((await system.inspect("counter/h")).context) === 5, 3_000, "counter/h to get the sent event");
    });

    test("an asked event is in actor_journal (per-actor seq, at, event) when the ask resolves", async () => {
      const { system, store } = await ctx.boot([counterKind()]);
      const before = Date.now();
      const r = await system.ask<number>("counter/j", { type: "add", n: 9 });
      const journal = await journalOf(store, "counter", "j");
      expect(journal).toHaveLength(1);
      expect(journal[0]).toMatchObject({ seq: r.seq, version: 1, event: { type: "add", n: 9 } });
      expect(journal[0]!.at).toBeGreaterThanOrEqual(before);
      expect(journal[0]!.at).toBeLessThanOrEqual(Date.now());
      expect(journal[0]!.event.at).toBe(journal[0]!.at);
      expect(await statusOf(store, "counter", "j")).toMatchObject({ status: "active" });
    });

    test("inspect answers only once everything sent before it is durable", async () => {
      const { system, store } = await ctx.boot([counterKind()]);
      await system.ask("counter/i", { type: "add", n: 1 });
      store.hold();
      system.send("counter/i", { type: "add", n: 2 });
      const view = system.inspect("counter/i");
      expect(await isSettled(view, 80)).toBe(false);
      store.release();
      expect(count((await view).context)).toBe(3);
    });

    test("group commit: many concurrent events share few transactions", async () => {
      const batches: CommitStats[] = [];
      const { system, store } = await ctx.boot([counterKind()], { onCommit: (s) => void batches.push(s) });
      const ids = Array.from({ length: 20 }, (_, i) => `g${i}`);
      await Promise.all(ids.map((id) => system.inspect(`counter/${id}`))); // resident, nothing journaled
      expect(batches).toEqual([]);
      const txBefore = store.commits;
      const asks = [];
      for (let round = 0; round < 10; round++) for (const id of ids) asks.push(system.ask<number>(`counter/${id}`, { type: "add", n: 1 }));
      const results = await Promise.all(asks);
      expect(results.map((r) => r.reply)).toEqual(asks.map((_, i) => Math.floor(i / ids.length) + 1));
      const events = batches.reduce((n, b) => n + b.events, 0);
      expect(events).toBe(200);
      expect(system.commits.events).toBe(200);
      expect(batches.length).toBeLessThanOrEqual(2);
      expect(system.commits.batches).toBe(batches.length);
      expect(store.commits - txBefore).toBe(batches.length);
      for (const id of ids) expect((await journalOf(store, "counter", id)).map((r) => r.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    });

    test("group commit respects maxBatch", async () => {
      const batches: CommitStats[] = [];
      const { system, store } = await ctx.boot([counterKind()], { maxBatch: 25, onCommit: (s) => void batches.push(s) });
      await system.ask("counter/m", { type: "add", n: 0 });
      batches.length = 0;
      const asks = Array.from({ length: 100 }, () => system.ask("counter/m", { type: "add", n: 1 }));
      await Promise.all(asks);
      expect(batches.length).toBeGreaterThanOrEqual(4);
      expect(Math.max(...batches.map((b) => b.writes))).toBeLessThanOrEqual(25);
      expect(batches.reduce((n, b) => n + b.events, 0)).toBe(100);
      expect((await journalOf(store, "counter", "m")).length).toBe(101);
    });

    test("a failed commit: the asker gets NotDurableError, no effect runs, the actor goes on from its durable state", async () => {
      const notified: unknown[] = [];
      const kind: KindDefinition = { ...counterKind({ backoffBaseMs: 5 }), effects: { notify: (e) => void notified.push(e) } };
      const { system, store } = await ctx.boot([kind]);
      await system.ask("counter/f", { type: "add", n: 1 });
      await system.ask("counter/bystander", { type: "add", n: 1 });
      store.failNext(new Error("disk on fire"));
      const lost = system.ask("counter/f", { type: "add", n: 10 });
      const lostNotify = system.ask("counter/f", { type: "notify" });
      const lostTell = system.ask("counter/f", { type: "tell", to: "counter/t", n: 1 });
      const err = await rejectionOf(lost);
      expect(err).toBeInstanceOf(NotDurableError);
      expect(err.message).toContain("disk on fire");
      expect(await rejectionOf(lostNotify)).toBeInstanceOf(NotDurableError);
      expect(await rejectionOf(lostTell)).toBeInstanceOf(NotDurableError);
      const next = await system.ask<number>("counter/f", { type: "add", n: 100 });
      expect(next).toMatchObject({ reply: 101, seq: 2 });
      expect(notified).toEqual([]);
      expect(system.isResident("counter/t")).toBe(false);
      expect((await journalOf(store, "counter", "f")).map((r) => r.event.n)).toEqual([1, 100]);
      // An actor with nothing in the failed commit is untouched.
      expect((await system.ask<number>("counter/bystander", { type: "add", n: 1 })).reply).toBe(2);
    });

    test("an event the database cannot store fails its own actor; the others committed with it answer", async () => {
      const { system, store } = await ctx.boot([counterKind({ backoffBaseMs: 5 })]);
      for (const id of ["nul", "before", "after"]) await system.ask(`counter/${id}`, { type: "add", n: id === "nul" ? 1 : 0 });
      // All three resident, so these events step in the same tick and share one group commit;
      // jsonb cannot hold a NUL, and the batch is isolated.
      const asks = [
        system.ask<number>("counter/before", { type: "add", n: 1 }),
        system.ask("counter/nul", { type: "add", n: 10, note: "nul\u0000" }),
        system.ask("counter/nul", { type: "add", n: 100 }),
        system.ask<number>("counter/after", { type: "add", n: 2 }),
      ];
      const [before, bad, behind, after] = await Promise.allSettled(asks);
      expect(before).toMatchObject({ status: "fulfilled", value: { reply: 1 } });
      expect(after).toMatchObject({ status: "fulfilled", value: { reply: 2 } });
      expect((bad as PromiseRejectedResult).reason).toBeInstanceOf(NotDurableError);
      expect((behind as PromiseRejectedResult).reason).toBeInstanceOf(NotDurableError);
      // The refused actor goes on from its durable state, with no gap in its journal.
      expect(await system.ask<number>("counter/nul", { type: "add", n: 1000 })).toMatchObject({ reply: 1001, seq: 2 });
      expect((await journalOf(store, "counter", "nul")).map((r) => r.event.n)).toEqual([1, 1000]);
    });

    test("after a failed commit and restart, inspect answers with the durable state (not the old commit error)", async () => {
      const { system, store } = await ctx.boot([counterKind({ backoffBaseMs: 5 })]);
      await system.ask("counter/fi", { type: "add", n: 1 });
      store.failNext(new Error("disk on fire"));
      expect(await rejectionOf(system.ask("counter/fi", { type: "add", n: 10 }))).toBeInstanceOf(NotDurableError);
      await Bun.sleep(50); // the restart is done; nothing is in flight any more
      const view = await system.inspect("counter/fi");
      expect(view.seq).toBe(1);
      expect(count(view.context)).toBe(1);
      // An event the logic ignores is answered the same way.
      expect((await system.ask("counter/fi", { type: "unknown-to-the-logic" })).seq).toBe(1);
    });

    test("crash recovery: acknowledged events survive kill -9, unacknowledged ones do not appear", async () => {
      const kinds = [counterKind()];
      const first = await ctx.boot(kinds);
      for (const n of [1, 2, 3, 4, 5]) await first.system.ask("counter/a", { type: "add", n });
      await first.system.ask("counter/b", { type: "add", n: 7 });
      first.store.hold();
      const unacked = first.system.ask("counter/a", { type: "add", n: 1000 }).catch((e: Error) => e);
      await eventually(() => first.store.waiting === 1, 3_000, "the last commit to be in flight");
      await first.crash();
      void unacked;

      const second = await ctx.boot(kinds);
      expect(second.started.recovered).toBe(2);
      expect(second.system.isResident("counter/a")).toBe(true);
      expect(second.system.isResident("counter/b")).toBe(true);
      const a = await second.system.inspect("counter/a");
      expect(a).toMatchObject({ seq: 5 });
      expect(count(a.context)).toBe(15);
      expect(count((await second.system.inspect("counter/b")).context)).toBe(7);
      expect((await second.system.ask<number>("counter/a", { type: "add", n: 1 }))).toMatchObject({ reply: 16, seq: 6 });
      expect((await journalOf(second.store, "counter", "a")).map((r) => r.event.n)).toEqual([1, 2, 3, 4, 5, 1]);
    });

    test("kill -9 in the middle of traffic: every acknowledged event is back, and each journal is gapless", async () => {
      const kinds = [counterKind({ snapshotEvery: 7 })];
      const first = await ctx.boot(kinds, { askTimeoutMs: 500 });
      const acked = new Map<string, number[]>();
      let crashed = false;
      // Five clients, each adding 1, 2, 3, ... to its own actor, one ask at a time.
      const clients = Array.from({ length: 5 }, async (_, c) => {
        const id = `k${c}`;
        acked.set(id, []);
        for (let n = 1; !crashed; n++) {
          try {
            await first.system.ask(`counter/${id}`, { type: "add", n });
            if (!crashed) acked.get(id)!.push(n);
          } catch {
            return;
          }
          // PGlite answers through microtasks only: without a real pause these loops would
          // starve the timers (and the test's own waits) of the event loop.
          await Bun.sleep(1);
        }
      });
      // And fire-and-forget traffic to a sixth actor.
      let sent = 0;
      const sender = setInterval(() => void (first.system.send("counter/sends", { type: "add", n: 1 }), sent++), 2);
      await eventually(() => [...acked.values()].every((a) => a.length >= 5), 5_000, "some traffic");
      await first.crash();
      crashed = true;
      clearInterval(sender);
      await Promise.all(clients);

      const second = await ctx.boot(kinds);
      for (const [id, mine] of acked) {
        const journal = await journalOf(second.store, "counter", id);
        const ns = journal.map((r) => r.event.n as number);
        expect(journal.map((r) => r.seq)).toEqual(ns.map((_, i) => i + 1)); // gapless from 1
        expect(ns).toEqual(ns.map((_, i) => i + 1)); // in the order asked
        expect(ns.length).toBeGreaterThanOrEqual(mine.length); // nothing acknowledged is lost
        expect(ns.length).toBeLessThanOrEqual(mine.length + 1); // at most the one in flight
        const view = await second.system.inspect(`counter/${id}`);
        expect(view.seq).toBe(ns.length);
        expect(count(view.context)).toBe(ns.reduce((a, b) => a + b, 0));
      }
      const sends = await journalOf(second.store, "counter", "sends");
      expect(sends.map((r) => r.seq)).toEqual(sends.map((_, i) => i + 1));
      expect(sends.length).toBeLessThanOrEqual(sent);
      expect(count((await second.system.inspect("counter/sends")).context)).toBe(sends.length);
    });

    test("a snapshot is written every snapshotEvery events, with the state at its seq", async () => {
      const { system, store } = await ctx.boot([counterKind({ snapshotEvery: 3 })]);
      for (let n = 1; n <= 7; n++) await system.ask("counter/s", { type: "add", n });
      const snaps = await snapshotsOf(store, "counter", "s");
      expect(snaps.map((s) => s.seq)).toEqual([3, 6]);
      expect(snaps.map((s) => s.version)).toEqual([1, 1]);
      expect(snaps.map((s) => count((s.state as { context: unknown }).context))).toEqual([6, 21]);
    });

    test("recovery is the latest snapshot plus the journal tail", async () => {
      const kinds = [counterKind({ snapshotEvery: 3 })];
      const first = await ctx.boot(kinds);
      for (let n = 1; n <= 8; n++) await first.system.ask("counter/r", { type: "add", n });
      // The journal up to the latest snapshot (seq 6) is not needed any more: prove it is not read.
      await rows(first.store, "delete from actor_journal where kind = 'counter' and actor_id = 'r' and seq <= 6");
      await first.crash();

      const second = await ctx.boot(kinds);
      expect(second.started.recovered).toBe(1);
      const r = await second.system.inspect("counter/r");
      expect(r.seq).toBe(8);
      expect(count(r.context)).toBe(36);
      expect(second.system.failedActors()).toEqual([]);
      expect((await second.system.ask<number>("counter/r", { type: "add", n: 9 }))).toMatchObject({ reply: 45, seq: 9 });
    });

    test("graceful stop snapshots every resident actor as passive: the next start replays nothing", async () => {
      const kinds = [counterKind()];
      const first = await ctx.boot(kinds);
      await first.system.ask("counter/p", { type: "add", n: 4 });
      await first.system.ask("counter/p", { type: "add", n: 5 });
      await first.system.ask("counter/q", { type: "add", n: 6 });
      await first.stop();
      const store = await ctx.open();
      expect((await snapshotsOf(store, "counter", "p")).map((s) => s.seq)).toEqual([2]);
      expect((await snapshotsOf(store, "counter", "q")).map((s) => s.seq)).toEqual([1]);
      expect(await rows(store, "select kind, actor_id, status from actors order by actor_id")).toEqual([
        { kind: "counter", actor_id: "p", status: "passive" },
        { kind: "counter", actor_id: "q", status: "passive" },
      ]);
      await store.close();

      const second = await ctx.boot(kinds);
      expect(second.started.recovered).toBe(0);
      expect(second.system.isResident("counter/p")).toBe(false);
      expect((await second.system.ask<number>("counter/p", { type: "add", n: 1 }))).toMatchObject({ reply: 10, seq: 3 });
      expect(count((await second.system.inspect("counter/q")).context)).toBe(6);
    });
  });
}
