import { describe, expect, test } from "bun:test";
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

    test("the journal is append-only: a second entry at the same seq fails its whole batch", async () => {
      const { store, journal, seqs } = await setup();
      await journal.append([ev("d", 1)]);
      const dup = journal.append([ev("d", 1, { again: true })]);
      const other = journal.append([ev("e", 1)]); // same batch: rolled back with it
      await rejectionOf(dup);
      await rejectionOf(other);
      expect(await seqs("e")).toEqual([]);
      const [row] = await rows<{ event: { again?: boolean } }>(store, "select event from actor_journal where actor_id = 'd'");
      expect(row!.event.again).toBeUndefined();
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
