import { describe, expect, test } from "bun:test";
import { isolationBudget } from "../../src/actors/isolate.ts";
import { Journal, type CommitStats, type Write } from "../../src/actors/journal.ts";
import { isSettled, rejectionOf, rows, useDb } from "../fixtures/harness.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

const ev = (id: string, seq: number, extra: Record<string, unknown> = {}): Write => ({
  op: "event", kind: "k", actor_id: id, seq, version: 1, at: 1_000 + seq, event: { type: "e", at: 1_000 + seq, ...extra },
});

for (const flavor of FLAVORS) {
  describe(`journal (group commit) [${flavor}]`, () => {
    const ctx = useDb(flavor);

    async function setup(options: ConstructorParameters<typeof Journal>[1] = {}) {
      const store = await ctx.openControlled();
      const commits: CommitStats[] = [];
      const journal = new Journal(store, { ...options, onCommit: (s) => (commits.push(s), options.onCommit?.(s)) });
      const seqs = async (id: string) => (await rows<{ seq: number }>(store, "select seq from actor_journal where kind = 'k' and actor_id = $1 order by seq", [id])).map((r) => r.seq);
      return { store, journal, commits, seqs };
    }

    test("appends made in the same tick commit together, in one transaction", async () => {
      const { store, journal, commits, seqs } = await setup();
      const appends = [journal.append([ev("a", 1)]), journal.append([ev("b", 1)]), journal.append([ev("a", 2), ev("a", 3)])];
      await Promise.all(appends);
      expect(store.commits).toBe(1);
      expect(commits).toEqual([{ writes: 4, events: 4, ms: expect.any(Number) }]);
      expect(await seqs("a")).toEqual([1, 2, 3]);
      expect(await seqs("b")).toEqual([1]);
    });

    test("an append's done callback runs at its commit, in append order, before the promise settles", async () => {
      const { store, journal } = await setup();
      const order: string[] = [];
      store.hold();
      const p1 = journal.append(ev("cb", 1), (err) => order.push(`done 1 ${err ? "err" : "ok"}`));
      void p1.then(() => order.push("promise 1"));
      const p2 = journal.append([ev("cb", 2)], (err) => order.push(`done 2 ${err ? "err" : "ok"}`));
      await eventually(() => store.waiting === 1, 2_000, "the commit to be in flight");
      expect(order).toEqual([]);
      store.release();
      await Promise.all([p1, p2]);
      expect(order.slice(0, 2)).toEqual(["done 1 ok", "done 2 ok"]);
      expect(order).toContain("promise 1");
      // A lost commit calls done with the error.
      store.failNext(new Error("gone"));
      let lost: Error | undefined;
      await journal.append(ev("cb", 3), (err) => (lost = err)).catch(() => {});
      expect(lost?.message).toBe("gone");
    });

    test("appends during a commit form the next batch; batches commit in append order", async () => {
      const { store, journal, commits } = await setup();
      store.hold();
      const order: string[] = [];
      const first = journal.append([ev("a", 1)]).then(() => order.push("first"));
      await eventually(() => store.waiting === 1, 2_000, "the first commit to be in flight");
      const second = journal.append([ev("a", 2)]).then(() => order.push("second"));
      const third = journal.append([ev("b", 1)]).then(() => order.push("third"));
      expect(journal.pending).toBe(3);
      expect(await isSettled(first, 30)).toBe(false);
      store.release();
      await Promise.all([first, second, third]);
      expect(order).toEqual(["first", "second", "third"]);
      expect(commits.map((c) => c.events)).toEqual([1, 2]);
      expect(journal.pending).toBe(0);
    });

    test("a batch holds at most maxBatch writes; one append is never split", async () => {
      const { journal, commits, seqs } = await setup({ maxBatch: 3 });
      await Promise.all([1, 2, 3, 4, 5, 6, 7].map((seq) => journal.append([ev("m", seq)])));
      expect(commits.map((c) => c.writes)).toEqual([3, 3, 1]);
      commits.length = 0;
      await journal.append([8, 9, 10, 11, 12].map((seq) => ev("m", seq)));
      expect(commits.map((c) => c.writes)).toEqual([5]);
      expect(await seqs("m")).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    });

    test("a failed commit rejects its batch and every batch behind it; onFailure sees their writes first", async () => {
      let seen: { writes: Write[]; settledBefore: boolean } | null = null;
      let settled = false;
      const { store, journal, seqs } = await setup({
        onFailure: (writes) => void (seen = { writes, settledBefore: settled }),
      });
      await journal.append([ev("f", 1)]);
      store.failNext(new Error("no space left"));
      store.hold();
      const a = journal.append([ev("f", 2)]);
      await eventually(() => store.waiting === 1, 2_000, "the commit to be in flight");
      const b = journal.append([ev("f", 3)]);
      a.then(() => (settled = true), () => (settled = true));
      store.release();
      expect((await rejectionOf(a)).message).toBe("no space left");
      expect((await rejectionOf(b)).message).toBe("no space left");
      expect(seen).not.toBeNull();
      expect(seen!.settledBefore).toBe(false);
      expect(seen!.writes.map((w) => (w as { seq: number }).seq)).toEqual([2, 3]);
      expect(await seqs("f")).toEqual([1]);
      // The journal keeps working afterwards.
      await journal.append([ev("f", 2)]);
      expect(await seqs("f")).toEqual([1, 2]);
    });

    test("the journal is append-only: a second entry at the same seq fails that append alone", async () => {
      const { journal, store, seqs } = await setup();
      await journal.append([ev("d", 1)]);
      const dup = journal.append([ev("d", 1, { again: true })]);
      const other = journal.append([ev("e", 1)]); // same batch: isolated from the duplicate
      expect((await rejectionOf(dup)) as Error & { code?: string }).toMatchObject({ code: "23505" });
      await other;
      expect(await seqs("e")).toEqual([1]);
      const [row] = await rows<{ event: { again?: boolean } }>(store, "select event from actor_journal where actor_id = 'd'");
      expect(row!.event.again).toBeUndefined();
    });

    test("an event the database cannot store fails its actor's appends alone, queued ones included; the rest commit", async () => {
      const failures: Array<{ seqs: number[]; code?: string }> = [];
      const { store, journal, seqs } = await setup({
        onFailure: (writes, err) => void failures.push({ seqs: writes.map((w) => (w as { seq: number }).seq), code: (err as { code?: string }).code }),
      });
      const order: string[] = [];
      const append = (w: Write) => {
        const name = `${w.actor_id}${(w as { seq: number }).seq}`;
        return journal.append(w, (err) => order.push(`${name} ${err ? "lost" : "ok"}`));
      };
      store.hold();
      // PostgreSQL's jsonb cannot hold a NUL: the batch fails, then is committed in halves.
      const batch = [append(ev("a", 1)), append(ev("b", 1, { text: "nul\u0000" })), append(ev("b", 2)), append(ev("c", 1))];
      await eventually(() => store.waiting === 1, 2_000, "a half of the refused batch to be in flight");
      const queued = [append(ev("b", 3)), append(ev("c", 2))]; // the next batch: b3 must not land after b1 was lost
      store.release();
      const settled = await Promise.allSettled([...batch, ...queued]);
      expect(settled.map((r) => r.status)).toEqual(["fulfilled", "rejected", "rejected", "fulfilled", "rejected", "fulfilled"]);
      expect(order).toEqual(["a1 ok", "b1 lost", "b2 lost", "c1 ok", "b3 lost", "c2 ok"]);
      expect(failures.flatMap((f) => f.seqs)).toEqual([1, 2, 3]);
      expect(failures.every((f) => f.code === "22P05")).toBe(true);
      expect([await seqs("a"), await seqs("b"), await seqs("c")]).toEqual([[1], [], [1, 2]]);
      // The failed actor starts again from what is durable.
      await journal.append(ev("b", 1));
      expect(await seqs("b")).toEqual([1]);
    });

    test("isolating one bad append among many costs a few statements, not one per append", async () => {
      let statements = 0;
      const commits: CommitStats[] = [];
      // The fence runs first in every statement's transaction, refused or not: it counts them.
      const { journal, seqs } = await setup({ fence: async () => void statements++, onCommit: (s) => void commits.push(s) });
      const n = 128;
      const appends = Array.from({ length: n }, (_, i) => journal.append(ev(`n${i}`, 1, i === 77 ? { text: "\u0000" } : {})));
      const settled = await Promise.allSettled(appends);
      expect(settled.filter((r) => r.status === "rejected").length).toBe(1);
      expect(settled[77]!.status).toBe("rejected");
      expect(commits.reduce((sum, c) => sum + c.events, 0)).toBe(n - 1);
      expect(statements).toBeLessThanOrEqual(2 * Math.log2(n) + 1);
      expect(await seqs("n76")).toEqual([1]);
    });

    test("a refused append alone in its batch fails its actor's queued appends, not the others'", async () => {
      const failures: Array<{ writes: string[]; code?: string }> = [];
      let attempt = 0;
      let queued: PromiseLike<void>[] = [];
      const name = (w: Write) => `${w.actor_id}${(w as { seq: number }).seq}`;
      const { journal, seqs } = await setup({
        onFailure: (writes, err) => void failures.push({ writes: writes.map(name), code: (err as { code?: string }).code }),
        // The first commit is refused for its data, with more appends queued behind it meanwhile.
        beforeCommit: async () => {
          if (++attempt > 1) return;
          queued = [journal.append(ev("b", 2)), journal.append(ev("c", 1)), journal.append(ev("b", 3))];
          throw Object.assign(new Error("value too long"), { code: "22001" });
        },
      });
      const first = await Promise.allSettled([journal.append(ev("b", 1))]);
      const settled = [...first, ...(await Promise.allSettled(queued))];
      expect(settled.map((r) => r.status)).toEqual(["rejected", "rejected", "fulfilled", "rejected"]);
      expect(failures).toEqual([{ writes: ["b1", "b2", "b3"], code: "22001" }]);
      expect([await seqs("b"), await seqs("c")]).toEqual([[], [1]]);
    });

    test("a queued batch emptied by isolation is skipped, and the journal goes on", async () => {
      const failures: number[] = [];
      let attempt = 0;
      let queued: PromiseLike<void> | undefined;
      const { journal, seqs } = await setup({
        onFailure: (writes) => void failures.push(writes.length),
        beforeCommit: async () => {
          if (++attempt > 1) return;
          queued = journal.append(ev("b", 2)); // everything queued is the refused actor's
          throw Object.assign(new Error("value too long"), { code: "22001" });
        },
      });
      expect((await rejectionOf(journal.append(ev("b", 1)))).message).toBe("value too long");
      expect((await rejectionOf(queued!)).message).toBe("value too long");
      await journal.append(ev("c", 1));
      expect(failures).toEqual([2]);
      expect(await seqs("c")).toEqual([1]);
    });

    test("a database that refuses everything fails the batch after a bounded number of statements", async () => {
      let statements = 0;
      const { journal, seqs } = await setup({
        beforeCommit: async () => {
          statements++;
          throw Object.assign(new Error("check constraint"), { code: "23514" });
        },
      });
      const n = 128;
      const settled = await Promise.allSettled(Array.from({ length: n }, (_, i) => journal.append(ev(`all${i}`, 1))));
      expect(settled.every((r) => r.status === "rejected")).toBe(true);
      expect(statements).toBeLessThanOrEqual(isolationBudget(n) + 1); // not 2n
      expect(await seqs("all0")).toEqual([]);
      const before = statements;
      await rejectionOf(journal.append(ev("all0", 1)));
      expect(statements).toBe(before + 1); // a batch of one is refused at once
    });

    test("a done callback that throws is reported, and the journal goes on", async () => {
      const thrown: unknown[] = [];
      const { journal, seqs } = await setup({ onCallbackError: (err) => void thrown.push(err) });
      const a = journal.append(ev("cbx", 1), () => {
        throw new Error("bug in a callback");
      });
      const b = journal.append(ev("cbx", 2));
      await Promise.all([a, b]);
      await journal.append(ev("cbx", 3));
      expect((thrown[0] as Error).message).toBe("bug in a callback");
      expect(await seqs("cbx")).toEqual([1, 2, 3]);
    });

    test("beforeCommit runs inside the transaction, after the writes; if it throws, nothing is committed", async () => {
      let seenInside = -1;
      let fail = false;
      const { journal, seqs } = await setup({
        beforeCommit: async (tx) => {
          const [r] = await tx.query<{ n: number }>("select count(*)::int as n from actor_journal where actor_id = 'bc'");
          seenInside = Number(r!.n);
          if (fail) throw new Error("vetoed");
        },
      });
      await journal.append([ev("bc", 1), ev("bc", 2)]);
      expect(seenInside).toBe(2);
      fail = true;
      expect((await rejectionOf(journal.append([ev("bc", 3)]))).message).toBe("vetoed");
      expect(await seqs("bc")).toEqual([1, 2]);
    });

    test("close waits for what is pending, then refuses appends", async () => {
      const { store, journal, seqs } = await setup();
      store.hold();
      const pending = journal.append([ev("c", 1)]);
      const closing = journal.close();
      expect(await isSettled(closing, 30)).toBe(false);
      store.release();
      await closing;
      await pending;
      expect(await seqs("c")).toEqual([1]);
      expect((await rejectionOf(journal.append([ev("c", 2)]))).message).toBe("journal is closed");
    });

    test("timers: last write per key wins within a batch; a fired timer clears only its own deadline", async () => {
      const { store, journal } = await setup();
      const timers = async () => rows<{ key: string; due_at: number }>(store, "select key, due_at from actor_timers where kind = 'k' order by key");
      const set = (key: string, dueAt: number): Write => ({ op: "timer.set", kind: "k", actor_id: "t", key, dueAt, event: { type: "alarm", key } });
      const clear = (key: string, dueAt?: number): Write => ({ op: "timer.clear", kind: "k", actor_id: "t", key, dueAt });
      await journal.append([set("a", 100), clear("a")]); // cancelled in the same batch
      await journal.append([clear("b"), set("b", 200)]); // set after a clear
      await journal.append([set("c", 300)]);
      await journal.append([set("c", 350)]); // set again: replaced
      expect(await timers()).toEqual([{ key: "b", due_at: 200 }, { key: "c", due_at: 350 }]);
      await journal.append([clear("c", 300)]); // a stale firing's clear: the timer was set again since
      expect(await timers()).toEqual([{ key: "b", due_at: 200 }, { key: "c", due_at: 350 }]);
      await journal.append([clear("c", 350)]);
      await journal.append([clear("b")]);
      expect(await timers()).toEqual([]);
    });

    test("timers: a deadline set and fired in the same batch clears the key, not just that deadline", async () => {
      const { store, journal } = await setup();
      const timers = async () => rows<{ key: string; due_at: number }>(store, "select key, due_at from actor_timers where kind = 'k' order by key");
      const set = (key: string, dueAt: number): Write => ({ op: "timer.set", kind: "k", actor_id: "t", key, dueAt, event: { type: "alarm", key } });
      const clear = (key: string, dueAt?: number): Write => ({ op: "timer.clear", kind: "k", actor_id: "t", key, dueAt });
      await journal.append([set("r", 100)]);
      // Set again to 200, and that deadline fires before the set is committed: one batch.
      await journal.append([set("r", 200), clear("r", 200)]);
      expect(await timers()).toEqual([]); // the replaced 100 must not survive to fire after a restart
      // A set again after its firing in the same batch still wins.
      await journal.append([set("s", 100)]);
      await journal.append([set("s", 200), clear("s", 200), set("s", 300)]);
      expect(await timers()).toEqual([{ key: "s", due_at: 300 }]);
    });

    test("status rows are upserted; a failure reason is kept only while failed", async () => {
      const { store, journal } = await setup();
      const status = (s: "active" | "passive" | "failed", failure?: string): Write => ({ op: "status", kind: "k", actor_id: "s", status: s, failure, at: 5 });
      const read = async () => rows(store, "select status, failure, updated_at from actors where kind = 'k' and actor_id = 's'");
      await journal.append([status("active")]);
      expect(await read()).toEqual([{ status: "active", failure: null, updated_at: 5 }]);
      await journal.append([status("passive"), status("failed", "it broke")]); // last in the batch wins
      expect(await read()).toEqual([{ status: "failed", failure: "it broke", updated_at: 5 }]);
      await journal.append([status("passive")]);
      expect(await read()).toEqual([{ status: "passive", failure: null, updated_at: 5 }]);
    });

    test("a snapshot already stored at a seq is kept", async () => {
      const { store, journal } = await setup();
      const snap = (n: number): Write => ({ op: "snapshot", kind: "k", actor_id: "p", seq: 4, version: 1, at: 9, state: { context: { n } } });
      await journal.append([snap(1)]);
      await journal.append([snap(2)]);
      expect(await rows(store, "select seq, state from actor_snapshots where actor_id = 'p'")).toEqual([{ seq: 4, state: { context: { n: 1 } } }]);
    });
  });
}
