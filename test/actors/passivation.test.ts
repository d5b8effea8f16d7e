import { describe, expect, test } from "bun:test";
import { counterKind, type CounterContext } from "../fixtures/counter.ts";
import { journalOf, snapshotsOf, statusOf, useDb } from "../fixtures/harness.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

const count = (context: unknown) => (context as CounterContext).count;

for (const flavor of FLAVORS) {
  describe(`passivation [${flavor}]`, () => {
    const ctx = useDb(flavor);

    test("an idle actor is snapshotted, leaves memory, and comes back with the same state", async () => {
      const { system, store } = await ctx.boot([counterKind({ idleMs: 60 })], { sweepMs: 15 });
      await system.ask("counter/idle", { type: "add", n: 5 });
      await system.ask("counter/idle", { type: "add", n: 6 });
      expect(system.isResident("counter/idle")).toBe(true);
      await eventually(() => !system.isResident("counter/idle"), 2_000, "the actor to leave memory");
      expect((await snapshotsOf(store, "counter", "idle")).map((s) => s.seq)).toEqual([2]);
      expect(await statusOf(store, "counter", "idle")).toMatchObject({ status: "passive" });
      expect(system.stats().kinds.get("counter")!.resident).toBe(0);

      const back = await system.ask<number>("counter/idle", { type: "add", n: 1 });
      expect(back).toMatchObject({ reply: 12, seq: 3 });
      expect(system.isResident("counter/idle")).toBe(true);
      expect(await statusOf(store, "counter", "idle")).toMatchObject({ status: "active" });
    });

    test("an actor leaves memory only once its passivation snapshot is durable, however often the sweeper runs", async () => {
      const { system, store } = await ctx.boot([counterKind({ idleMs: 40 })], { sweepMs: 10 });
      await system.ask("counter/slow", { type: "add", n: 3 });
      const release = store.hold();
      await eventually(() => store.waiting === 1, 2_000, "the passivation snapshot to be committing");
      await Bun.sleep(100); // ten sweeps while the snapshot is held
      expect(system.isResident("counter/slow")).toBe(true);
      release();
      await eventually(() => !system.isResident("counter/slow"), 2_000, "the actor to leave memory");
      expect((await snapshotsOf(store, "counter", "slow")).map((s) => s.seq)).toEqual([1]);
    });

    test("the passivation snapshot is what brings it back (the journal before it is not read)", async () => {
      const { system, store } = await ctx.boot([counterKind({ idleMs: 40 })], { sweepMs: 10 });
      for (const n of [1, 2, 3]) await system.ask("counter/snap", { type: "add", n });
      await eventually(() => !system.isResident("counter/snap"), 2_000, "the actor to leave memory");
      await store.query("delete from actor_journal where kind = 'counter' and actor_id = 'snap'");
      const view = await system.inspect("counter/snap");
      expect(view.seq).toBe(3);
      expect(count(view.context)).toBe(6);
    });

    test("actors coming back in the same tick are read together, each with its own state", async () => {
      const { system, store } = await ctx.boot([counterKind({ idleMs: 40 })], { sweepMs: 10 });
      const N = 120;
      const ids = Array.from({ length: N }, (_, i) => `w${i}`);
      await Promise.all(ids.map((id, i) => system.ask(`counter/${id}`, { type: "add", n: i })));
      await Promise.all(ids.map((id) => system.ask(`counter/${id}`, { type: "add", n: 1 })));
      await eventually(() => ids.every((id) => !system.isResident(`counter/${id}`)), 5_000, "all to leave memory");
      // Every third comes back from its journal alone (its snapshot gone), the rest from snapshots.
      await store.query("delete from actor_snapshots where kind = 'counter' and actor_id in (select 'w' || g from generate_series(0, $1::int, 3) g)", [N - 1]);
      const reads: string[] = [];
      const query = store.query.bind(store);
      store.query = ((sql: string, params?: readonly unknown[]) => {
        if (/from (actors|actor_snapshots|actor_journal)\b/.test(sql)) reads.push(sql);
        return query(sql, params);
      }) as typeof store.query;
      const back = await Promise.all(ids.map((id) => system.ask<number>(`counter/${id}`, { type: "add", n: 0 })));
      expect(back.map((b) => b.reply)).toEqual(ids.map((_, i) => i + 1));
      expect(back.map((b) => b.seq)).toEqual(ids.map(() => 3));
      expect(reads.length).toBeLessThanOrEqual(6); // one per table per batch; it was three per actor
    });

    test("an actor that keeps getting events is not passivated", async () => {
      const { system } = await ctx.boot([counterKind({ idleMs: 300 })], { sweepMs: 10 });
      for (let i = 0; i < 10; i++) {
        await system.ask("counter/busy", { type: "add", n: 1 });
        expect(system.isResident("counter/busy")).toBe(true);
        await Bun.sleep(40);
      }
      await eventually(() => !system.isResident("counter/busy"), 2_000, "the actor to leave memory once idle");
    });

    test("a pinned actor stays resident; unpinned it leaves (pins are counted)", async () => {
      const { system, store } = await ctx.boot([counterKind({ idleMs: 30 })], { sweepMs: 10 });
      system.pin("counter/pinned");
      system.pin("counter/pinned");
      await system.ask("counter/pinned", { type: "add", n: 2 });
      await system.ask("counter/loose", { type: "add", n: 2 });
      await eventually(() => !system.isResident("counter/loose"), 2_000, "the unpinned actor to leave memory");
      await Bun.sleep(150);
      expect(system.isResident("counter/pinned")).toBe(true);
      expect(await statusOf(store, "counter", "pinned")).toMatchObject({ status: "active" });
      system.unpin("counter/pinned");
      await Bun.sleep(150);
      expect(system.isResident("counter/pinned")).toBe(true);
      system.unpin("counter/pinned");
      await eventually(() => !system.isResident("counter/pinned"), 2_000, "the actor to leave memory once unpinned");
      expect(count((await system.inspect("counter/pinned")).context)).toBe(2);
    });

    test("pin brings a passive actor back into memory", async () => {
      const kinds = [counterKind({ idleMs: 30 })];
      const first = await ctx.boot(kinds, { sweepMs: 10 });
      await first.system.ask("counter/pp", { type: "add", n: 3 });
      await eventually(() => !first.system.isResident("counter/pp"), 2_000, "the actor to leave memory");
      first.system.pin("counter/pp");
      await eventually(() => first.system.isResident("counter/pp"), 2_000, "the pinned actor to load");
      await Bun.sleep(120);
      expect(first.system.isResident("counter/pp")).toBe(true);
      expect(count((await first.system.inspect("counter/pp")).context)).toBe(3);
    });

    test("a passivated actor needs no replay after a crash and keeps its state", async () => {
      const kinds = [counterKind({ idleMs: 30 })];
      const first = await ctx.boot(kinds, { sweepMs: 10 });
      await first.system.ask("counter/cp", { type: "add", n: 8 });
      await eventually(() => !first.system.isResident("counter/cp"), 2_000, "the actor to leave memory");
      await first.crash();

      const second = await ctx.boot(kinds, { sweepMs: 10 });
      expect(second.started.recovered).toBe(0);
      expect(second.system.isResident("counter/cp")).toBe(false);
      expect((await second.system.ask<number>("counter/cp", { type: "add", n: 1 }))).toMatchObject({ reply: 9, seq: 2 });
      expect((await journalOf(second.store, "counter", "cp")).map((r) => r.seq)).toEqual([1, 2]);
    });

    test("an event that arrives while the passivation snapshot commits keeps the actor resident and loses nothing", async () => {
      const { system, store } = await ctx.boot([counterKind({ idleMs: 40 })], { sweepMs: 10 });
      await system.ask("counter/race", { type: "add", n: 1 });
      store.hold();
      await eventually(() => store.waiting === 1, 2_000, "the passivation snapshot to be committing");
      const late = system.ask<number>("counter/race", { type: "add", n: 1 });
      store.release();
      expect((await late).reply).toBe(2);
      expect(system.isResident("counter/race")).toBe(true);
      await eventually(() => !system.isResident("counter/race"), 2_000, "the actor to leave memory afterwards");
      expect(count((await system.inspect("counter/race")).context)).toBe(2);
      expect((await snapshotsOf(store, "counter", "race")).map((s) => s.seq)).toEqual([1, 2]);
    });
  });
}
