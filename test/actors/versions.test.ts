import { describe, expect, test } from "bun:test";
import { ActorFailedError } from "../../src/actors/errors.ts";
import type { KindDefinition, Migration, PersistedState } from "../../src/actors/types.ts";
import { counterKind, type CounterContext } from "../fixtures/counter.ts";
import { journalOf, rejectionOf, snapshotsOf, statusOf, useDb } from "../fixtures/harness.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

const count = (context: unknown) => (context as CounterContext).count;

/** The counter at `version`, with `migrations`. */
const counterAt = (version: number, migrations?: Record<number, Migration>, options: KindDefinition["options"] = {}): KindDefinition => ({
  ...counterKind(options, version),
  migrations,
});

const mapCount = (f: (n: number) => number): Migration => (s: PersistedState) => ({
  ...s,
  context: { ...(s.context as CounterContext), count: f((s.context as CounterContext).count) },
});

for (const flavor of FLAVORS) {
  describe(`versions [${flavor}]`, () => {
    const ctx = useDb(flavor);

    /** Leaves counter/`id` passive with a snapshot of `version` holding count `n`. */
    async function snapshotAt(version: number, id: string, n: number): Promise<void> {
      const node = await ctx.boot([counterAt(version)]);
      await node.system.ask(`counter/${id}`, { type: "add", n });
      await node.stop();
    }

    test("snapshots and journal entries record the logic version that wrote them", async () => {
      await snapshotAt(1, "v", 3);
      const node = await ctx.boot([counterAt(2, { 1: (s) => s })]);
      await node.system.ask("counter/v", { type: "add", n: 1 });
      await node.stop();
      const store = await ctx.open();
      expect((await journalOf(store, "counter", "v")).map((r) => r.version)).toEqual([1, 2]);
      expect((await snapshotsOf(store, "counter", "v")).map((s) => [s.seq, s.version])).toEqual([[1, 1], [2, 2]]);
    });

    test("an older snapshot is migrated by migrations[n] when the actor loads", async () => {
      await snapshotAt(1, "m", 3);
      const { system } = await ctx.boot([counterAt(2, { 1: mapCount((n) => n * 10) })]);
      expect(count((await system.inspect("counter/m")).context)).toBe(30);
      expect((await system.ask<number>("counter/m", { type: "add", n: 1 })).reply).toBe(31);
      expect(system.failedActors()).toEqual([]);
    });

    test("migrations chain from the snapshot's version up to the running one, in order", async () => {
      await snapshotAt(1, "chain", 3);
      const { system } = await ctx.boot([counterAt(3, { 1: mapCount((n) => n * 10), 2: mapCount((n) => n + 1) })]);
      expect(count((await system.inspect("counter/chain")).context)).toBe(31);
    });

    test("recovery migrates the latest snapshot and then replays the journal tail", async () => {
      const first = await ctx.boot([counterAt(1, undefined, { snapshotEvery: 2 })]);
      for (const n of [1, 2, 3]) await first.system.ask("counter/tail", { type: "add", n });
      await first.crash(); // snapshot (v1) at seq 2 with count 3, tail: seq 3

      const second = await ctx.boot([counterAt(2, { 1: mapCount((n) => n * 10) }, { snapshotEvery: 2 })]);
      expect(second.started.recovered).toBe(1);
      const view = await second.system.inspect("counter/tail");
      expect(view.seq).toBe(3);
      expect(count(view.context)).toBe(33);
    });

    test("no registered migration: the actor is reported failed, naming the versions, and never reset", async () => {
      await snapshotAt(1, "old", 3);
      const { system, store } = await ctx.boot([counterAt(2)]);
      const err = await rejectionOf(system.ask("counter/old", { type: "add", n: 1 }));
      expect(err).toBeInstanceOf(ActorFailedError);
      expect(err.message).toMatch(/snapshot is version 1; no migration from version 1 to 2/);
      const [failed] = system.failedActors();
      expect(failed?.address).toBe("counter/old");
      expect(failed?.failure).toMatch(/snapshot is version 1.*no migration from version 1 to 2/);
      await eventually(async () => (await statusOf(store, "counter", "old"))?.status === "failed", 2_000, "the failure to be persisted");
      expect((await statusOf(store, "counter", "old"))!.failure).toBe(failed!.failure);
      // Still refused later: not silently started from scratch.
      expect(() => system.send("counter/old", { type: "add", n: 1 })).toThrow(ActorFailedError);
      expect((await journalOf(store, "counter", "old")).map((r) => r.seq)).toEqual([1]);
      expect((await snapshotsOf(store, "counter", "old")).map((s) => [s.seq, s.version])).toEqual([[1, 1]]);
      // A new actor of the same kind is fine.
      expect((await system.ask<number>("counter/new", { type: "add", n: 2 })).reply).toBe(2);
    });

    test("an unmigratable actor recovered at start is reported failed by start()", async () => {
      const first = await ctx.boot([counterAt(1, undefined, { snapshotEvery: 1 })]);
      await first.system.ask("counter/boot", { type: "add", n: 1 });
      await first.crash();

      const second = await ctx.boot([counterAt(2, undefined, { snapshotEvery: 1 })]);
      expect(second.started.failed).toBe(1);
      expect(second.system.failedActors()).toEqual([{ address: "counter/boot", failure: expect.stringMatching(/snapshot is version 1.*from version 1 to 2/) }]);
    });

    test("a snapshot newer than the running logic is refused", async () => {
      await snapshotAt(2, "future", 3);
      const { system, store } = await ctx.boot([counterAt(1)]);
      const err = await rejectionOf(system.inspect("counter/future"));
      expect(err).toBeInstanceOf(ActorFailedError);
      expect(err.message).toContain("snapshot is version 2, newer than the running logic (version 1)");
      expect(system.failedActors().map((f) => f.address)).toEqual(["counter/future"]);
      expect((await snapshotsOf(store, "counter", "future")).map((s) => s.version)).toEqual([2]);
    });

    test("a migration that throws fails the actor with its message", async () => {
      await snapshotAt(1, "bad", 3);
      const { system } = await ctx.boot([counterAt(2, { 1: () => { throw new Error("cannot convert counts"); } })]);
      const err = await rejectionOf(system.ask("counter/bad", { type: "add", n: 1 }));
      expect(err).toBeInstanceOf(ActorFailedError);
      expect(err.message).toContain("migration from version 1 failed: cannot convert counts");
    });

    test("a migrated snapshot the logic cannot read fails the actor instead of being misread", async () => {
      await snapshotAt(1, "misfit", 3);
      const { system } = await ctx.boot([counterAt(2, { 1: (s) => ({ ...s, value: "no-such-state" }) })]);
      const err = await rejectionOf(system.inspect("counter/misfit"));
      expect(err).toBeInstanceOf(ActorFailedError);
      expect(err.message).toContain("snapshot does not fit the logic");
    });
  });
}
