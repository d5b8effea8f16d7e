import { describe, expect, test } from "bun:test";
import { canonical, diff, ReplayError, stateAt, timeline, verify } from "../../src/actors/replay.ts";
import type { KindDefinition } from "../../src/actors/types.ts";
import type { Store } from "../../src/store/store.ts";
import { counterKind, type CounterContext } from "../fixtures/counter.ts";
import { greeterKind } from "../fixtures/greeter.ts";
import { journalOf, rejectionOf, rows, useDb } from "../fixtures/harness.ts";
import { FLAVORS } from "../helpers/stores.ts";

const defs: KindDefinition[] = [counterKind()];
const countOf = (state: Record<string, unknown>) => (state.context as CounterContext).count;

for (const flavor of FLAVORS) {
  describe(`replay [${flavor}]`, () => {
    const ctx = useDb(flavor);

    /**
     * counter/h: add 1, add 2, arm k (+5 s), add 4, close; snapshots at seq 3 (snapshotEvery)
     * and seq 5 (graceful stop). Returns a plain store on the database.
     */
    async function history(): Promise<Store> {
      const node = await ctx.boot([counterKind({ snapshotEvery: 3 })]);
      const { system } = node;
      await system.ask("counter/h", { type: "add", n: 1 });
      await system.ask("counter/h", { type: "add", n: 2 });
      await system.ask("counter/h", { type: "arm", key: "k", delayMs: 5_000 });
      await system.ask("counter/h", { type: "add", n: 4 });
      await system.ask("counter/h", { type: "close" });
      await node.stop();
      return ctx.open();
    }

    test("timeline: seq, time, event, state, context changes and effects of every entry", async () => {
      const store = await history();
      const journal = await journalOf(store, "counter", "h");
      const t = await timeline(store, defs, "counter/h");
      expect(t.address).toBe("counter/h");
      expect(t.version).toBe(1);
      expect(t.from).toBe(0);
      expect(t.steps.map((s) => [s.seq, s.event, s.state])).toEqual([
        [1, "add", "open"], [2, "add", "open"], [3, "arm", "open"], [4, "add", "open"], [5, "close", "closed"],
      ]);
      expect(t.steps.map((s) => s.at)).toEqual(journal.map((r) => r.at));
      expect(t.steps.map((s) => s.version)).toEqual([1, 1, 1, 1, 1]);
      expect(t.steps[0]!.changes).toEqual([{ path: "count", before: 0, after: 1 }]);
      expect(t.steps[1]!.changes).toEqual([{ path: "count", before: 1, after: 3 }]);
      expect(t.steps[2]!.changes).toEqual([]);
      expect(t.steps[0]!.effects).toEqual([{ type: "reply", data: 1 }]);
      const due = journal[2]!.at + 5_000;
      expect(t.steps[2]!.effects).toEqual([{ type: "timer.set", key: "k", at: due, event: { type: "alarm", key: "k", due } }]);
      expect(t.steps[4]!.effects).toEqual([]);
    });

    test("timeline can be limited to a range of sequence numbers", async () => {
      const store = await history();
      const t = await timeline(store, defs, "counter/h", { from: 2, to: 4 });
      expect(t.steps.map((s) => s.seq)).toEqual([2, 3, 4]);
      // Changes are still computed against the real previous state.
      expect(t.steps[0]!.changes).toEqual([{ path: "count", before: 1, after: 3 }]);
    });

    test("timeline shows the initial state's entry effects with the first event", async () => {
      const node = await ctx.boot([greeterKind(() => {})]);
      await node.system.ask("greeter/g", { type: "poke" });
      await node.system.ask("greeter/g", { type: "poke" });
      await node.stop();
      const store = await ctx.open();
      const t = await timeline(store, [greeterKind(() => {})], "greeter/g");
      expect(t.steps.map((s) => s.effects)).toEqual([[{ type: "hello" }], []]);
      expect(t.steps.map((s) => s.changes)).toEqual([[{ path: "pokes", before: 0, after: 1 }], [{ path: "pokes", before: 1, after: 2 }]]);
    });

    test("stateAt: the full persisted state just after any seq, 0 being the initial state", async () => {
      const store = await history();
      const at0 = await stateAt(store, defs, "counter/h", 0);
      expect(at0.seq).toBe(0);
      expect(at0.state).toMatchObject({ value: "open", context: { id: "h", count: 0, fired: [], received: 0 } });
      expect(countOf((await stateAt(store, defs, "counter/h", 2)).state)).toBe(3);
      expect(countOf((await stateAt(store, defs, "counter/h", 4)).state)).toBe(7);
      expect((await stateAt(store, defs, "counter/h", 5)).state).toMatchObject({ value: "closed", status: "active" });
      const beyond = await rejectionOf(stateAt(store, defs, "counter/h", 6));
      expect(beyond).toBeInstanceOf(ReplayError);
      expect(beyond.message).toContain("the journal ends at seq 5");
    });

    test("stateAt matches what the live actor had at that seq", async () => {
      const node = await ctx.boot([counterKind()]);
      const live: Array<{ seq: number; context: unknown; value: unknown }> = [];
      for (const n of [5, 6, 7]) {
        const r = await node.system.ask("counter/live", { type: "add", n });
        live.push({ seq: r.seq, context: r.context, value: r.value });
      }
      for (const l of live) {
        const s = await stateAt(node.store, defs, "counter/live", l.seq);
        expect(canonical(s.state.context)).toBe(canonical(l.context));
        expect(s.state.value).toEqual(l.value);
      }
    });

    test("verify: replaying the journal reproduces every stored snapshot", async () => {
      const store = await history();
      const v = await verify(store, defs, "counter/h");
      expect(v).toEqual({
        address: "counter/h",
        ok: true,
        from: 0,
        checked: [{ seq: 3, ok: true }, { seq: 5, ok: true }],
        skipped: [],
        journalLength: 5,
      });
    });

    test("verify reports a stored snapshot that diverges from the replay, with the difference", async () => {
      const store = await history();
      await rows(store, "update actor_snapshots set state = jsonb_set(state, '{context,count}', '999') where kind = 'counter' and actor_id = 'h' and seq = 3");
      const v = await verify(store, defs, "counter/h");
      expect(v.ok).toBe(false);
      expect(v.checked).toEqual([
        { seq: 3, ok: false, diff: [{ path: "context.count", before: 999, after: 3 }] },
        { seq: 5, ok: true },
      ]);
    });

    test("without the journal's beginning, replay starts from the earliest snapshot", async () => {
      const store = await history();
      await rows(store, "delete from actor_journal where kind = 'counter' and actor_id = 'h' and seq <= 3");
      const t = await timeline(store, defs, "counter/h");
      expect(t.from).toBe(3);
      expect(t.steps.map((s) => s.seq)).toEqual([4, 5]);
      expect(t.steps[0]!.changes).toEqual([{ path: "count", before: 3, after: 7 }]);
      expect(countOf((await stateAt(store, defs, "counter/h", 4)).state)).toBe(7);
      const early = await rejectionOf(stateAt(store, defs, "counter/h", 2));
      expect(early).toBeInstanceOf(ReplayError);
      expect(early.message).toContain("before seq 3 is not available");
      const v = await verify(store, defs, "counter/h");
      expect(v).toMatchObject({ ok: true, from: 3, checked: [{ seq: 5, ok: true }], journalLength: 2 });
    });

    test("verify skips snapshots written by another logic version", async () => {
      const first = await ctx.boot([counterKind()]);
      await first.system.ask("counter/vv", { type: "add", n: 1 });
      await first.stop(); // v1 snapshot at seq 1
      const v2: KindDefinition = { ...counterKind({}, 2), migrations: { 1: (s) => s } };
      const second = await ctx.boot([v2]);
      await second.system.ask("counter/vv", { type: "add", n: 1 });
      await second.stop(); // v2 snapshot at seq 2
      const store = await ctx.open();
      const v = await verify(store, [v2], "counter/vv");
      expect(v.ok).toBe(true);
      expect(v.checked).toEqual([{ seq: 2, ok: true }]);
      expect(v.skipped).toEqual([{ seq: 1, reason: "snapshot is version 1, logic is version 2" }]);
    });

    test("replay refuses an unknown kind and an actor without history", async () => {
      const store = await history();
      const unknownKind = await rejectionOf(timeline(store, defs, "machine/1"));
      expect(unknownKind).toBeInstanceOf(ReplayError);
      expect(unknownKind.message).toContain('no logic is registered for kind "machine"');
      const nobody = await rejectionOf(verify(store, defs, "counter/nobody"));
      expect(nobody).toBeInstanceOf(ReplayError);
      expect(nobody.message).toContain("counter/nobody has no journal and no snapshot");
    });

    test("replay writes nothing", async () => {
      const store = await history();
      const before = await rows(store, "select (select count(*) from actor_journal) as j, (select count(*) from actor_snapshots) as s, (select count(*) from actors) as a");
      await timeline(store, defs, "counter/h");
      await stateAt(store, defs, "counter/h", 3);
      await verify(store, defs, "counter/h");
      expect(await rows(store, "select (select count(*) from actor_journal) as j, (select count(*) from actor_snapshots) as s, (select count(*) from actors) as a")).toEqual(before);
    });
  });
}

describe("replay helpers", () => {
  test("canonical ignores key order, keeps array order", () => {
    expect(canonical({ b: 1, a: { d: [2, 1], c: null } })).toBe(canonical({ a: { c: null, d: [2, 1] }, b: 1 }));
    expect(canonical({ a: [1, 2] })).not.toBe(canonical({ a: [2, 1] }));
  });

  test("diff lists leaf changes as dotted paths", () => {
    expect(diff({ a: 1, b: { c: 2, d: 3 } }, { a: 1, b: { c: 5 }, e: true })).toEqual([
      { path: "b.c", before: 2, after: 5 },
      { path: "b.d", before: 3 },
      { path: "e", after: true },
    ]);
    expect(diff(1, 2)).toEqual([{ path: "(root)", before: 1, after: 2 }]);
    expect(diff({ x: [1] }, { x: [1] })).toEqual([]);
  });
});
