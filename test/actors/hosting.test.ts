import { describe, expect, test } from "bun:test";
import {
  ActorFailedError, AskTimeoutError, MailboxFullError, SystemStoppedError, UnknownKindError,
} from "../../src/actors/errors.ts";
import type { Effect, EffectContext, KindDefinition } from "../../src/actors/types.ts";
import { counterKind, type CounterContext } from "../fixtures/counter.ts";
import { greeterKind } from "../fixtures/greeter.ts";
import { isSettled, journalOf, rejectionOf, useDb } from "../fixtures/harness.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

const count = (context: unknown) => (context as CounterContext).count;

for (const flavor of FLAVORS) {
  describe(`hosting [${flavor}]`, () => {
    const ctx = useDb(flavor);

    test("actors are addressed kind/id: each id is its own actor with its own state", async () => {
      const { system } = await ctx.boot([counterKind()]);
      const a1 = await system.ask<number>("counter/a", { type: "add", n: 2 });
      const b1 = await system.ask<number>("counter/b", { type: "add", n: 40 });
      const a2 = await system.ask<number>("counter/a", { type: "add", n: 3 });
      expect(a1).toMatchObject({ reply: 2, seq: 1, value: "open" });
      expect(b1).toMatchObject({ reply: 40, seq: 1 });
      expect(a2).toMatchObject({ reply: 5, seq: 2 });
      expect(count(a2.context)).toBe(5);
      expect((a2.context as CounterContext).id).toBe("a");
      expect(count((await system.inspect("counter/b")).context)).toBe(40);
    });

    test("send is fire-and-forget: it returns at once and the event is applied", async () => {
      const { system } = await ctx.boot([counterKind()]);
      expect(system.send("counter/f", { type: "add", n: 7 })).toBeUndefined();
      await eventually(async () => count((await system.inspect("counter/f")).context) === 7, 3_000, "the sent event to be applied");
      expect((await journalOf(system.store, "counter", "f")).map((r) => r.event.n)).toEqual([7]);
    });

    test("one ordered mailbox per actor: events are applied and journaled in the order sent", async () => {
      const { system } = await ctx.boot([counterKind()]);
      const ns = Array.from({ length: 30 }, (_, i) => i + 1);
      const asks = ns.map((n) => (n % 3 === 0 ? system.ask<number>("counter/o", { type: "add", n }) : (system.send("counter/o", { type: "add", n }), null)));
      const results = await Promise.all(asks.filter((a) => a !== null));
      // Each asked event sees exactly the events sent before it: a prefix sum.
      expect(results.map((r) => r.reply)).toEqual(ns.filter((n) => n % 3 === 0).map((n) => (n * (n + 1)) / 2));
      const journal = await journalOf(system.store, "counter", "o");
      expect(journal.map((r) => r.seq)).toEqual(ns);
      expect(journal.map((r) => r.event.n)).toEqual(ns);
    });

    test("the host stamps `at` on every event; the logic reads time from it", async () => {
      const { system } = await ctx.boot([counterKind()], { clock: () => 1_700_000_000_000 });
      await system.ask("counter/t", { type: "add", n: 1 });
      const [row] = await journalOf(system.store, "counter", "t");
      expect(row).toMatchObject({ seq: 1, at: 1_700_000_000_000, event: { type: "add", n: 1, at: 1_700_000_000_000 } });
    });

    test("an unknown kind or a malformed address is refused to the sender", async () => {
      const { system } = await ctx.boot([counterKind()]);
      expect(() => system.send("nope/1", { type: "add", n: 1 })).toThrow(UnknownKindError);
      expect(await rejectionOf(system.ask("nope/1", { type: "add", n: 1 }))).toBeInstanceOf(UnknownKindError);
      expect(() => system.send("counter", { type: "add", n: 1 })).toThrow(/not an actor address/);
      expect(() => system.send("counter/", { type: "add", n: 1 })).toThrow(/not an actor address/);
      // The system is unaffected.
      expect((await system.ask("counter/x", { type: "add", n: 1 })).reply).toBe(1);
    });

    test("ask rejects with AskTimeoutError when no answer comes in time; the event is still applied", async () => {
      const { system, store } = await ctx.boot([counterKind()]);
      await system.ask("counter/slow", { type: "add", n: 1 });
      store.hold();
      const err = await rejectionOf(system.ask("counter/slow", { type: "add", n: 5 }, 80));
      expect(err).toBeInstanceOf(AskTimeoutError);
      expect((err as AskTimeoutError).code).toBe("ACTOR_ASK_TIMEOUT");
      store.release();
      expect(count((await system.inspect("counter/slow")).context)).toBe(6);
      expect((await journalOf(store, "counter", "slow")).map((r) => r.event.n)).toEqual([1, 5]);
    });

    test("a full mailbox refuses the sender with MailboxFullError and affects nothing else", async () => {
      const { system, store } = await ctx.boot([counterKind({ mailboxLimit: 3 })]);
      await system.ask("counter/full", { type: "add", n: 1 });
      await system.ask("counter/other", { type: "add", n: 1 });
      store.hold(); // nothing becomes durable: accepted events stay in flight
      const accepted = [1, 2, 3].map((n) => system.ask<number>("counter/full", { type: "add", n: 10 * n }));
      expect(() => system.send("counter/full", { type: "add", n: 1000 })).toThrow(MailboxFullError);
      const refused = await rejectionOf(system.ask("counter/full", { type: "add", n: 1000 }));
      expect(refused).toBeInstanceOf(MailboxFullError);
      expect((refused as MailboxFullError).code).toBe("ACTOR_MAILBOX_FULL");
      // Another actor of the same kind still takes events.
      const other = system.ask<number>("counter/other", { type: "add", n: 2 });
      store.release();
      expect((await Promise.all(accepted)).map((r) => r.reply)).toEqual([11, 31, 61]);
      expect((await other).reply).toBe(3);
      // Once drained, the actor takes events again; the refused ones were never applied.
      expect((await system.ask<number>("counter/full", { type: "add", n: 1 })).reply).toBe(62);
      expect((await journalOf(store, "counter", "full")).map((r) => r.event.n)).toEqual([1, 10, 20, 30, 1]);
    });

    test("one actor's failure never affects another", async () => {
      const { system } = await ctx.boot([counterKind({ maxRestarts: 1, backoffBaseMs: 5, failureWindowMs: 60_000 })]);
      const good: Array<Promise<unknown>> = [];
      const bad: Array<Promise<unknown>> = [];
      for (let i = 0; i < 20; i++) {
        good.push(system.ask("counter/good", { type: "add", n: 1 }));
        if (i % 5 === 0) bad.push(system.ask("counter/bad", { type: "boom" }).catch((e: Error) => e));
      }
      await Promise.all(bad);
      const results = (await Promise.all(good)) as Array<{ reply: number }>;
      expect(results.map((r) => r.reply)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      await eventually(() => system.failedActors().some((f) => f.address === "counter/bad"), 3_000, "counter/bad to be failed");
      expect(() => system.send("counter/bad", { type: "add", n: 1 })).toThrow(ActorFailedError);
      expect(system.failedActors().map((f) => f.address)).toEqual(["counter/bad"]);
      expect((await system.ask<number>("counter/good", { type: "add", n: 1 })).reply).toBe(21);
    });

    test("a send effect delivers an event to another actor", async () => {
      const { system } = await ctx.boot([counterKind()]);
      await system.ask("counter/from", { type: "tell", to: "counter/to", n: 4 });
      await system.ask("counter/from", { type: "tell", to: "counter/to", n: 5 });
      await eventually(async () => count((await system.inspect("counter/to")).context) === 9, 3_000, "counter/to to receive both");
      expect(count((await system.inspect("counter/from")).context)).toBe(0);
    });

    test("a send effect to an unknown kind is dropped without hurting the sender", async () => {
      const { system } = await ctx.boot([counterKind()]);
      const r = await system.ask("counter/s", { type: "tell", to: "ghost/1", n: 1 });
      expect(r.seq).toBe(1);
      expect((await system.ask<number>("counter/s", { type: "add", n: 2 })).reply).toBe(2);
    });

    test("kind effect handlers get the effect and the state after the event", async () => {
      const seen: Array<{ effect: Effect; ctx: EffectContext }> = [];
      const kind: KindDefinition = { ...counterKind(), effects: { notify: (effect, c) => void seen.push({ effect, ctx: c }) } };
      const { system } = await ctx.boot([kind]);
      await system.ask("counter/n", { type: "add", n: 3 });
      await system.ask("counter/n", { type: "notify" });
      expect(seen).toHaveLength(1);
      expect(seen[0]!.effect).toEqual({ type: "notify", count: 3 });
      expect(seen[0]!.ctx).toMatchObject({ address: "counter/n", id: "n", value: "open" });
      expect(count(seen[0]!.ctx.context)).toBe(3);
    });

    test("a throwing or rejecting effect handler is counted and does not stop the actor", async () => {
      let calls = 0;
      const kind: KindDefinition = {
        ...counterKind(),
        effects: {
          notify: async () => {
            calls++;
            if (calls === 1) throw new Error("handler down");
            await Promise.reject(new Error("async handler down"));
          },
        },
      };
      const { system } = await ctx.boot([kind]);
      await system.ask("counter/e", { type: "notify" });
      await system.ask("counter/e", { type: "notify" });
      await eventually(() => system.stats().kinds.get("counter")!.effectErrors === 2, 2_000, "two effect errors counted");
      expect(calls).toBe(2);
      expect((await system.ask<number>("counter/e", { type: "add", n: 1 })).reply).toBe(1);
      expect(system.failedActors()).toEqual([]);
    });

    test("the initial state's entry effects run once, with the first event, after it is durable", async () => {
      const hellos: string[] = [];
      const { system, store } = await ctx.boot([greeterKind((a) => hellos.push(a))]);
      await system.inspect("greeter/g"); // loading it runs nothing
      expect(hellos).toEqual([]);
      store.hold();
      const first = system.ask("greeter/g", { type: "poke" });
      expect(await isSettled(first, 50)).toBe(false);
      expect(hellos).toEqual([]);
      store.release();
      await first;
      await system.ask("greeter/g", { type: "poke" });
      expect(hellos).toEqual(["greeter/g"]);
    });

    test("an event the logic does not handle is answered with no reply and changes nothing", async () => {
      const { system } = await ctx.boot([counterKind()]);
      await system.ask("counter/c", { type: "add", n: 2 });
      await system.ask("counter/c", { type: "close" });
      const r = await system.ask("counter/c", { type: "add", n: 100 });
      expect(r).toMatchObject({ reply: undefined, value: "closed", seq: 2 });
      expect(count(r.context)).toBe(2);
    });

    test("after stop, the system refuses new work with SystemStoppedError", async () => {
      const node = await ctx.boot([counterKind()]);
      await node.system.ask("counter/z", { type: "add", n: 1 });
      expect(node.system.ready).toBe(true);
      await node.system.stop();
      expect(node.system.ready).toBe(false);
      expect(() => node.system.send("counter/z", { type: "add", n: 1 })).toThrow(SystemStoppedError);
      expect(await rejectionOf(node.system.ask("counter/z", { type: "add", n: 1 }))).toBeInstanceOf(SystemStoppedError);
    });

    test("stop waits for queued events to become durable before it returns", async () => {
      const node = await ctx.boot([counterKind()]);
      const { system, store } = node;
      store.hold();
      const pending = [1, 2, 3].map((n) => system.ask("counter/q", { type: "add", n }));
      const stopping = system.stop(5_000);
      expect(await isSettled(stopping, 50)).toBe(false);
      store.release();
      await stopping;
      expect((await Promise.all(pending)).map((r) => r.reply)).toEqual([1, 3, 6]);
      expect((await journalOf(store, "counter", "q")).map((r) => r.seq)).toEqual([1, 2, 3]);
    });
  });
}
