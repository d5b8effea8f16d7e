/**
 * The embedded database on its worker thread: `bun bench/store.ts`.
 *
 * PGlite runs on a worker thread behind `openPglite` (src/store/pglite.ts), so that its
 * WebAssembly work does not hold up the server's thread. This compares it with PGlite on the
 * calling thread (`openPgliteInThread`, the baseline), each on a fresh copy of one database:
 *
 * (a) Per-query cost: BENCH_N (default 2,000) `select $1::int` and BENCH_N single-row inserts,
 *     sequentially and 100 at a time, in µs per query, and the worker's ratio to the baseline.
 *     Best of BENCH_REPS (default 5) runs, the two sides interleaved.
 * (b) What the main thread is kept from: a burst of 2,000 inserts of 4 KiB of text, all issued
 *     at once, while a 1 ms `setInterval` ticks. Reported: the burst's wall time, the longest
 *     gap between ticks, and the time the thread was blocked (the sum over ticks of whatever
 *     a gap exceeded 2 ms by). Median of BENCH_REPS bursts.
 */
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { PGlite } from "@electric-sql/pglite";
import { openPglite } from "../src/store/pglite.ts";
import { createPglite } from "../src/store/pglite-in-thread.ts";
import type { Queryable, Store } from "../src/store/store.ts";

/** PGlite on this thread behind the Store interface: the baseline, not the server's. */
async function openPgliteInThread(dataDir: string): Promise<Store> {
  const db = await createPglite(dataDir);
  const query = async <T>(q: Pick<PGlite, "query">, sql: string, params?: readonly unknown[]) =>
    (await q.query<T>(sql, params as unknown[])).rows;
  return {
    flavor: "pglite",
    query: (sql, params) => query(db, sql, params),
    transaction: (fn) => db.transaction((tx) => fn({ query: (sql, params) => query(tx, sql, params) } satisfies Queryable)),
    exec: async (script) => {
      await db.exec(script);
    },
    close: () => db.close(),
  };
}

const N = Number(process.env.BENCH_N ?? 2_000);
const REPS = Number(process.env.BENCH_REPS ?? 5);
const CONCURRENCY = 100;
const BURST = 2_000;
const BODY = "x".repeat(4_096);

const root = mkdtempSync(join(tmpdir(), "tether-bench-store-"));
process.on("exit", () => rmSync(root, { recursive: true, force: true }));

// One initdb; every run opens a copy of it.
const template = join(root, "template");
{
  const store = await openPgliteInThread(template);
  await store.exec("create table items (id serial primary key, n int, body text)");
  await store.close();
}
let copies = 0;
async function fresh(open: (dir: string) => Promise<Store>): Promise<Store> {
  const dir = join(root, `db${++copies}`);
  cpSync(template, dir, { recursive: true });
  return open(dir);
}

const variants = [
  { name: "in-thread", open: openPgliteInThread },
  { name: "worker", open: openPglite },
] as const;
type Name = (typeof variants)[number]["name"];

/** µs per operation of `count` calls of `op`, `concurrency` at a time. */
async function perOp(count: number, concurrency: number, op: (i: number) => Promise<unknown>): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count) await op(next++);
    }),
  );
  return ((performance.now() - started) * 1_000) / count;
}

const cases: Array<[string, (s: Store) => Promise<number>]> = [
  ["select $1::int, sequential", (s) => perOp(N, 1, (i) => s.query("select $1::int as n", [i]))],
  ["select $1::int, 100 at a time", (s) => perOp(N, CONCURRENCY, (i) => s.query("select $1::int as n", [i]))],
  ["insert one row, sequential", (s) => perOp(N, 1, (i) => s.query("insert into items (n, body) values ($1, 'b')", [i]))],
  ["insert one row, 100 at a time", (s) => perOp(N, CONCURRENCY, (i) => s.query("insert into items (n, body) values ($1, 'b')", [i]))],
  ["transaction of 2 inserts, sequential", (s) => perOp(N / 2, 1, (i) => s.transaction(async (tx) => {
    await tx.query("insert into items (n, body) values ($1, 'b')", [i]);
    await tx.query("insert into items (n, body) values ($1, 'c')", [i]);
  }))],
];

interface Lag {
  wallMs: number;
  maxGapMs: number;
  blockedMs: number;
}
/** A burst of BURST 4 KiB inserts, all at once, under a 1 ms ticker. */
async function burst(store: Store): Promise<Lag> {
  let last = performance.now();
  let maxGap = 0;
  let blocked = 0;
  const ticker = setInterval(() => {
    const now = performance.now();
    const gap = now - last;
    last = now;
    maxGap = Math.max(maxGap, gap);
    if (gap > 2) blocked += gap - 2;
  }, 1);
  await Bun.sleep(20); // the ticker settles
  maxGap = 0;
  blocked = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: BURST }, (_, i) => store.query("insert into items (n, body) values ($1, $2)", [i, BODY])));
  const wallMs = performance.now() - started;
  // The tick that was due while the last statements ran.
  await Bun.sleep(3);
  clearInterval(ticker);
  return { wallMs, maxGapMs: maxGap, blockedMs: blocked };
}

const best = new Map<string, Map<Name, number[]>>();
const lags = new Map<Name, Lag[]>();
for (let rep = 0; rep < REPS; rep++) {
  for (const v of rep % 2 ? [...variants].reverse() : variants) {
    const store = await fresh(v.open);
    await perOp(200, 1, (i) => store.query("select $1::int as n", [i])); // warm-up
    for (const [label, run] of cases) {
      const byName = best.get(label) ?? new Map<Name, number[]>();
      best.set(label, byName);
      byName.set(v.name, [...(byName.get(v.name) ?? []), await run(store)]);
    }
    lags.set(v.name, [...(lags.get(v.name) ?? []), await burst(store)]);
    await store.close();
  }
}

const fmt = (n: number, digits = 1) => n.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

console.log(`bun ${Bun.version}, PGlite 0.5.16; N = ${N}, best of ${REPS}`);
console.log("\n(a) per query (µs)                        in-thread     worker    ratio   samples (in-thread | worker)");
for (const [label, byName] of best) {
  const a = Math.min(...byName.get("in-thread")!);
  const b = Math.min(...byName.get("worker")!);
  const samples = (n: Name) => byName.get(n)!.map((x) => fmt(x, 0)).join("/");
  console.log(`  ${label.padEnd(38)} ${fmt(a).padStart(10)} ${fmt(b).padStart(10)} ${fmt(b / a, 2).padStart(8)}   ${samples("in-thread")} | ${samples("worker")}`);
}
console.log(`\n(b) burst of ${fmt(BURST, 0)} inserts of 4 KiB, 1 ms ticker (median of ${REPS})`);
console.log("                                 wall (ms)   longest gap (ms)   main thread blocked (ms)");
for (const { name } of variants) {
  const runs = lags.get(name)!;
  console.log(`  ${name.padEnd(28)} ${fmt(median(runs.map((r) => r.wallMs))).padStart(10)} ${fmt(median(runs.map((r) => r.maxGapMs))).padStart(18)} ${fmt(median(runs.map((r) => r.blockedMs))).padStart(26)}`);
}
