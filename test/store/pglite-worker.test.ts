import { describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { openPglite, workerOf } from "../../src/store/pglite.ts";
import { isSettled, rejectionOf, useDb } from "../fixtures/harness.ts";

const insertActor = "insert into actors (kind, actor_id, status, updated_at) values ('k', $1, $2, 1)";

/** What the proxy in src/store/pglite.ts adds to PGlite: a worker thread and the messages to it. */
describe("PGlite on its worker thread", () => {
  const ctx = useDb("pglite");

  test("a failing statement's error carries PGlite's fields, and a stack through the caller", async () => {
    const store = await ctx.open();
    await store.query(insertActor, ["a", "active"]);
    const unique = await rejectionOf(store.query(insertActor, ["a", "active"]));
    expect(unique).toBeInstanceOf(Error);
    expect(unique.message).toMatch(/duplicate key value violates unique constraint/);
    expect(unique).toMatchObject({ code: "23505", severity: "ERROR", table: "actors", schema: "public", constraint: "actors_pkey" });
    expect((unique as Error & { detail?: string }).detail).toContain("(kind, actor_id)=(k, a)");
    const check = await rejectionOf((async function insertsABogusStatus() {
      await store.query(insertActor, ["b", "bogus"]);
    })());
    expect(check.message).toMatch(/check constraint/);
    expect((check as Error & { code?: string }).code).toBe("23514");
    expect(check.stack).toContain("insertsABogusStatus");
  });

  test("a transaction whose function throws rolls back and rethrows that very error", async () => {
    const store = await ctx.open();
    class Mine extends Error {}
    const mine = new Mine("changed my mind");
    const err = await rejectionOf(store.transaction(async (tx) => {
      await tx.query(insertActor, ["a", "active"]);
      throw mine;
    }));
    expect(err).toBe(mine);
    expect(await store.query("select count(*)::int as n from actors")).toEqual([{ n: 0 }]);
  });

  test("a statement that fails inside a transaction the function survives makes COMMIT fail", async () => {
    const store = await ctx.open();
    const err = await rejectionOf(store.transaction(async (tx) => {
      await tx.query(insertActor, ["a", "active"]);
      await tx.query(insertActor, ["a", "active"]).catch(() => {});
    }));
    expect((err as Error & { code?: string }).code).toBe("25P02");
    expect(await store.query("select count(*)::int as n from actors")).toEqual([{ n: 0 }]);
    // After COMMIT or ROLLBACK the transaction's handle is closed.
    let kept: { query(sql: string): Promise<unknown> } | undefined;
    await store.transaction(async (tx) => void (kept = tx));
    expect((await rejectionOf(kept!.query("select 1"))).message).toBe("Transaction is closed");
  });

  test("plain queries issued while a transaction is open run after it and see its commit", async () => {
    const store = await ctx.open();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let inside!: () => void;
    const started = new Promise<void>((r) => (inside = r));
    const tx = store.transaction(async (t) => {
      await t.query(insertActor, ["a", "active"]);
      inside();
      await gate; // open, with a write not yet committed
      await t.query(insertActor, ["b", "active"]);
      return "done";
    });
    await started;
    const reads = Array.from({ length: 5 }, () => store.query<{ n: number }>("select count(*)::int as n from actors"));
    const write = store.query(insertActor, ["c", "passive"]);
    expect(await isSettled(Promise.race(reads), 50)).toBe(false); // they wait for the transaction…
    release();
    expect(await tx).toBe("done");
    for (const r of reads) expect(await r).toEqual([{ n: 2 }]); // …and see all of it
    await write;
    expect(await store.query("select actor_id from actors order by actor_id")).toEqual([{ actor_id: "a" }, { actor_id: "b" }, { actor_id: "c" }]);
  });

  test("values round-trip: jsonb, bytea, timestamptz, int8, null, text", async () => {
    const store = await ctx.open();
    const bytes = new Uint8Array(70_000).map((_, i) => (i * 7) % 256);
    const at = new Date("2026-11-22T10:11:12.345Z");
    const json = { a: [1, "two", null, { deep: true }], s: "it's \"quoted\" ü" };
    const [row] = await store.query(
      "select $1::jsonb as j, $2::bytea as b, $3::timestamptz as t, $4::int8 as n, $5::text as z, $6::text as s, '\\x'::bytea as empty",
      [JSON.stringify(json), bytes, at, 9_007_199_254_740_991, null, "ü\n"]);
    expect(row).toEqual({ j: json, b: bytes, t: at, n: 9_007_199_254_740_991, z: null, s: "ü\n", empty: new Uint8Array(0) });
    expect(row!.b).toBeInstanceOf(Uint8Array);
    expect(row!.t).toBeInstanceOf(Date);
    // A Buffer (a Uint8Array) goes in as bytea too, and so does a view into the middle of a buffer.
    const [buf] = await store.query<{ b: Uint8Array; v: Uint8Array }>("select $1::bytea as b, $2::bytea as v", [Buffer.from("hi"), bytes.subarray(5, 9)]);
    expect(buf).toEqual({ b: new Uint8Array([104, 105]), v: bytes.slice(5, 9) });
  });

  test("parameters that cannot be cloned fail that call alone", async () => {
    const store = await ctx.open();
    const err = await rejectionOf(store.query("select $1::text", [() => 1]));
    expect(err.message).toMatch(/cannot pass the parameters/);
    expect(await store.query("select 1 as one")).toEqual([{ one: 1 }]);
  });

  test("when the worker dies, what is waiting rejects and every later call rejects at once", async () => {
    const store = await ctx.open();
    const slow = store.query("select pg_sleep(0.3)");
    const tx = store.transaction(async (t) => t.query("select 1"));
    await Bun.sleep(20);
    workerOf(store)!.terminate();
    expect((await rejectionOf(slow)).message).toMatch(/worker thread (exited|died)/);
    expect((await rejectionOf(tx)).message).toMatch(/worker thread (exited|died)/);
    const started = performance.now();
    expect((await rejectionOf(store.query("select 1"))).message).toMatch(/worker thread (exited|died)/);
    expect((await rejectionOf(store.transaction(async () => 1))).message).toMatch(/worker thread/);
    expect(performance.now() - started).toBeLessThan(100);
    await store.close(); // nothing left to close; does not throw
  });

  test("an error raised in the worker ends it and fails what is waiting", async () => {
    const store = await ctx.open();
    const slow = store.query("select pg_sleep(0.3)");
    await Bun.sleep(20);
    workerOf(store)!.dispatchEvent(new ErrorEvent("error", { message: "boom" }));
    expect((await rejectionOf(slow)).message).toBe("PGlite's worker thread died: boom");
    expect((await rejectionOf(store.query("select 1"))).message).toMatch(/died: boom/);
  });

  test("PGlite failing in the worker (it reports an abort) ends it and fails what is waiting", async () => {
    const store = await ctx.open();
    const slow = store.query("select pg_sleep(0.3)");
    await Bun.sleep(20);
    // What the worker posts when a statement dies of a WebAssembly abort.
    workerOf(store)!.dispatchEvent(new MessageEvent("message", { data: { fatal: "PGlite aborted: Aborted()" } }));
    expect((await rejectionOf(slow)).message).toBe("PGlite's worker thread failed: PGlite aborted: Aborted()");
    expect((await rejectionOf(store.query("select 1"))).message).toMatch(/failed: PGlite aborted/);
  });

  test("expect(p).rejects and .resolves see a store's promise right after another store call (oven-sh/bun#37189)", async () => {
    const store = await ctx.open();
    await store.query("select 1");
    await expect(store.transaction(async (tx) => {
      await tx.query("select 1");
      throw new Error("no");
    })).rejects.toThrow("no");
    await expect(store.query("select 2 as n")).resolves.toEqual([{ n: 2 }]);
    await expect(store.query("select * from nowhere")).rejects.toThrow(/nowhere/);
  });

  test("close waits for the calls under way; then calls reject, and closing again is fine", async () => {
    const store = await ctx.open();
    const slow = store.query("select 1 as one, pg_sleep(0.1)");
    const closing = store.close();
    expect((await rejectionOf(store.query("select 1"))).message).toBe("PGlite is closed");
    expect(await slow).toEqual([{ one: 1, pg_sleep: "" }]);
    await closing;
    await store.close();
    expect((await rejectionOf(store.query("select 1"))).message).toBe("PGlite is closed");
    expect((await rejectionOf(store.exec("select 1"))).message).toBe("PGlite is closed");
  });

  test("opening a data directory PGlite cannot use rejects with PGlite's message", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tether-bad-"));
    try {
      writeFileSync(join(dir, "PG_VERSION"), "11\n"); // a data directory of another Postgres
      const err = await rejectionOf(openPglite(dir));
      expect(err.message.length).toBeGreaterThan(0);
      expect(err.message).not.toMatch(/worker thread/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // The worker must keep a process alive only while a call waits on it.
  const ROOT = resolve(import.meta.dir, "..", "..");
  const script = (body: string) => `
    import { openPglite } from ${JSON.stringify(join(ROOT, "src/store/pglite.ts"))};
    const store = await openPglite(process.argv[2]);
    ${body}`;
  for (const [name, body, out] of [
    ["a process that closes its store exits", `console.log((await store.query("select 7 as n"))[0].n); await store.close();`, "7"],
    ["a process that never closes its store exits", `console.log((await store.query("select 8 as n"))[0].n);`, "8"],
    ["a call is waited for even when nothing else keeps the process alive", `store.query("select 9 as n, pg_sleep(0.2)").then((r) => console.log(r[0].n));`, "9"],
  ] as const) {
    test(name, async () => {
      const dir = mkdtempSync(join(tmpdir(), "tether-exit-"));
      try {
        const file = join(dir, "script.ts");
        writeFileSync(file, script(body));
        const proc = Bun.spawn([process.execPath, file, ctx.db.config.dataDir], { stdout: "pipe", stderr: "pipe" });
        const timer = setTimeout(() => proc.kill(), 20_000);
        const code = await proc.exited;
        clearTimeout(timer);
        expect({ code, out: (await new Response(proc.stdout).text()).trim() }).toEqual({ code: 0, out });
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
