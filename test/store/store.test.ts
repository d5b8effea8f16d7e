import { describe, expect, test } from "bun:test";
import { useDb } from "../fixtures/harness.ts";
import { FLAVORS } from "../helpers/stores.ts";

for (const flavor of FLAVORS) {
  describe(`store [${flavor}]`, () => {
    const ctx = useDb(flavor);
    const connect = () => ctx.open();

    test("reports its flavor", async () => {
      expect((await connect()).flavor).toBe(flavor);
    });

    test("parameterised queries; bigint comes back as a number, jsonb as a value", async () => {
      const store = await connect();
      const big = 1_700_000_000_123;
      await store.query("insert into actor_journal (kind, actor_id, seq, version, at, event) values ($1, $2, $3, $4, $5, $6::text::jsonb)",
        ["k", "it's \"quoted\"", 9_007_199_254_740, 1, big, JSON.stringify({ type: "x", nested: { list: [1, "two", null] } })]);
      const rows = await store.query<{ actor_id: string; seq: number; at: number; event: unknown }>(
        "select actor_id, seq, at, event from actor_journal where kind = $1", ["k"]);
      expect(rows).toEqual([{ actor_id: "it's \"quoted\"", seq: 9_007_199_254_740, at: big, event: { type: "x", nested: { list: [1, "two", null] } } }]);
      expect(typeof rows[0]!.seq).toBe("number");
      expect(await store.query("select count(*) as n from actor_journal")).toEqual([{ n: 1 }]);
      expect(await store.query("select $1::text as t, $2::int as i", [null, 3])).toEqual([{ t: null, i: 3 }]);
    });

    test("a transaction commits when its function resolves and returns its value", async () => {
      const store = await connect();
      const out = await store.transaction(async (tx) => {
        await tx.query("insert into actors (kind, actor_id, status, updated_at) values ('k', 'a', 'active', 1)");
        const [r] = await tx.query<{ n: number }>("select count(*)::int as n from actors");
        return r!.n;
      });
      expect(out).toBe(1);
      expect(await store.query("select actor_id from actors")).toEqual([{ actor_id: "a" }]);
    });

    test("a transaction rolls back when its function throws, and the error comes through", async () => {
      const store = await connect();
      const err = await store
        .transaction(async (tx) => {
          await tx.query("insert into actors (kind, actor_id, status, updated_at) values ('k', 'a', 'active', 1)");
          throw new Error("changed my mind");
        })
        .catch((e: Error) => e);
      expect((err as Error).message).toBe("changed my mind");
      expect(await store.query("select * from actors")).toEqual([]);
    });

    test("a failing statement rejects, rolls its transaction back, and the store stays usable", async () => {
      const store = await connect();
      await expect(store.query("select * from no_such_table")).rejects.toThrow(/no_such_table/);
      await expect(
        store.transaction(async (tx) => {
          await tx.query("insert into actors (kind, actor_id, status, updated_at) values ('k', 'a', 'active', 1)");
          await tx.query("insert into actors (kind, actor_id, status, updated_at) values ('k', 'b', 'bogus', 1)");
        }),
      ).rejects.toThrow(/check constraint/);
      expect(await store.query("select * from actors")).toEqual([]);
      expect(await store.query("select 1 as one")).toEqual([{ one: 1 }]);
    });

    test("exec runs a script of several statements", async () => {
      const store = await connect();
      await store.exec("create table scratch (x int); insert into scratch values (1); insert into scratch values (2);");
      expect(await store.query("select x from scratch order by x")).toEqual([{ x: 1 }, { x: 2 }]);
    });

    test("concurrent queries and transactions all complete", async () => {
      const store = await connect();
      await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          i % 2
            ? store.transaction((tx) => tx.query("insert into actors (kind, actor_id, status, updated_at) values ('k', $1, 'passive', 1)", [`a${i}`]))
            : store.query("insert into actors (kind, actor_id, status, updated_at) values ('k', $1, 'passive', 1)", [`a${i}`]),
        ),
      );
      expect(await store.query("select count(*)::int as n from actors")).toEqual([{ n: 20 }]);
    });

    test("data survives closing and reopening the database", async () => {
      const first = await connect();
      await first.query("insert into actors (kind, actor_id, status, updated_at) values ('k', 'kept', 'passive', 7)");
      await first.close();
      const second = await connect();
      expect(await second.query("select actor_id, updated_at from actors")).toEqual([{ actor_id: "kept", updated_at: 7 }]);
    });
  });
}
