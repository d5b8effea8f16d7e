/**
 * Benchmark of the durable actor runtime: `bun bench/actors.ts` (or `npm run bench`).
 *
 * The machine it runs on is small and shared, so every figure is printed next to a baseline
 * measured in the same run, on the same logic and the same database, and judged as a ratio:
 *
 *   1. in-memory throughput: ActorSystem.send (no-op store) vs bare XState actor.send
 *   2. durable throughput with group commit (PGlite, PostgreSQL): 100 actors, vs a bare loop of
 *      batched multi-row INSERTs of the same rows, in batches of the runtime's observed size
 *   3. recovery of 10,000 actors x 20 journaled events vs one SELECT of those rows
 *   4. heap per resident idle actor vs a bare XState actor
 *
 * PostgreSQL figures need BENCH_DATABASE_URL (or TEST_DATABASE_URL); each run works in a schema
 * of its own (bench_<random>) and drops it at the end. PGlite runs in a fresh temp directory.
 * Every loop is bounded by a count; the whole run takes two to three minutes.
 */
import { heapSize } from "bun:jsc";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { createActor } from "xstate";
import { loadActiveActors } from "../src/actors/repository.ts";
import { ActorSystem } from "../src/actors/system.ts";
import type { ActorEvent } from "../src/actors/types.ts";
import { applySchema } from "../src/store/schema.ts";
import { openStore, type Store } from "../src/store/store.ts";
import { benchKind, benchLogic, type BenchEvent } from "./logic.ts";
import { openNoopStore } from "./noop-store.ts";

// ---- sizes (every loop is bounded by these counts) ----------------------------------------------

const MEM = { actors: 100, bursts: [1, 10, 100, 500], eventsPerRun: 200_000, reps: 4, asksPerActor: 300 };
const DURABLE = {
  actors: 100,
  reps: 4,
  postgres: { asksPerActor: 300, burst: 50, rounds: 20 },
  pglite: { asksPerActor: 100, burst: 50, rounds: 6 },
};
const RECOVERY = { actors: 10_000, events: 20, reps: { postgres: 3, pglite: 2 } };
const HEAP = { actors: 20_000 };

const EVENT = { type: "add", n: 1 } as const satisfies ActorEvent & BenchEvent;
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const now = () => performance.now();

// ---- reporting ------------------------------------------------------------------------------------

interface Figure {
  figure: string;
  measured: string;
  baseline: string;
  ratio: string;
  goal: string;
  met: "yes" | "NO" | "-";
}
const figures: Figure[] = [];

function report(f: Figure, notes: string[] = []): void {
  figures.push(f);
  console.log(`\n## ${f.figure}`);
  console.log(`   measured: ${f.measured}`);
  console.log(`   baseline: ${f.baseline}`);
  console.log(`   ratio:    ${f.ratio}   goal: ${f.goal}   met: ${f.met}`);
  for (const n of notes) console.log(`   - ${n}`);
}

const int = (n: number) => Math.round(n).toLocaleString("en-US");
const rate = (events: number, ms: number) => (events * 1000) / ms;
const fmtRate = (r: number) => `${int(r)} events/s`;
const ms = (t: number) => `${t.toFixed(0)} ms`;
const met = (ok: boolean): Figure["met"] => (ok ? "yes" : "NO");

function gc(): void {
  Bun.gc(true);
  Bun.gc(true);
}

// ---- 1. in-memory throughput --------------------------------------------------------------------

async function inMemory(): Promise<void> {
  const ids = range(MEM.actors).map((i) => `m${i}`);
  const perRun = MEM.eventsPerRun;

  const system = new ActorSystem({ store: openNoopStore() }).register(benchKind("mem"));
  await system.start();
  const addresses = ids.map((id) => `mem/${id}`);
  await Promise.all(addresses.map((a) => system.ask(a, EVENT))); // activation, untimed
  const last = addresses[addresses.length - 1]!;
  let sent = 1;

  const bare = ids.map((id) => createActor(benchLogic, { input: { id } }).start());

  // A round sends `burst` events to each actor in one synchronous loop, then waits until the
  // last one is processed, journaled and its effects released. One inspect of the last actor is
  // enough: batches commit in append order and each actor's callbacks run in that order.
  const runtimeSends = async (burst: number, events: number) => {
    for (let done = 0; done < events; done += burst * addresses.length) {
      for (const a of addresses) for (let k = 0; k < burst; k++) system.send(a, EVENT);
      await system.inspect(last);
    }
    sent += events / addresses.length;
  };
  const bareSends = (burst: number, events: number) => {
    for (let done = 0; done < events; done += burst * bare.length) for (const actor of bare) for (let k = 0; k < burst; k++) actor.send(EVENT);
  };
  const runtimeAsks = async (perActor: number) => {
    await Promise.all(addresses.map(async (a) => {
      for (let i = 0; i < perActor; i++) await system.ask(a, EVENT);
    }));
    sent += perActor;
  };

  // Warm-up (JIT) of both sides, untimed.
  for (const burst of MEM.bursts) {
    bareSends(burst, perRun / 4);
    await runtimeSends(burst, perRun / 4);
  }
  await runtimeAsks(20);

  const best = new Map<string, number>();
  const keep = (key: string, ms: number) => best.set(key, Math.min(best.get(key) ?? Infinity, ms));
  const timed = async (fn: () => unknown) => {
    gc();
    const t = now();
    await fn();
    return now() - t;
  };
  for (let rep = 0; rep < MEM.reps; rep++) {
    for (const burst of MEM.bursts) {
      keep(`bare ${burst}`, await timed(() => bareSends(burst, perRun)));
      keep(`runtime ${burst}`, await timed(() => runtimeSends(burst, perRun)));
    }
    keep("ask", await timed(() => runtimeAsks(MEM.asksPerActor)));
  }
  for (const a of addresses) {
    const count = ((await system.inspect(a)).context as { count: number }).count;
    if (count !== sent) throw new Error(`in-memory run lost events: ${a} counted ${count}, expected ${sent}`);
  }
  await system.stop();
  for (const a of bare) a.stop();

  for (const burst of MEM.bursts) {
    const bareRate = rate(perRun, best.get(`bare ${burst}`)!);
    const runtimeRate = rate(perRun, best.get(`runtime ${burst}`)!);
    const ratio = runtimeRate / bareRate;
    report(
      {
        figure: `1. in-memory, ActorSystem.send (no-op store), ${MEM.actors} actors, bursts of ${burst}/actor (${int(burst * MEM.actors)} in flight)`,
        measured: fmtRate(runtimeRate),
        baseline: `${fmtRate(bareRate)} (bare XState createActor().start(); actor.send())`,
        ratio: ratio.toFixed(3),
        goal: ">= 0.5",
        met: met(ratio >= 0.5),
      },
      [`${int(perRun)} events per timed run, best of ${MEM.reps} runs for each side`],
    );
  }
  // Asks against the best bare rate of any burst size.
  const bareRate = Math.max(...MEM.bursts.map((b) => rate(perRun, best.get(`bare ${b}`)!)));
  const askRate = rate(MEM.actors * MEM.asksPerActor, best.get("ask")!);
  report(
    {
      figure: `1. in-memory, ActorSystem.ask (no-op store), ${MEM.actors} concurrent ask loops`,
      measured: fmtRate(askRate),
      baseline: `${fmtRate(bareRate)} (bare XState actor.send, best of the above)`,
      ratio: (askRate / bareRate).toFixed(3),
      goal: ">= 0.5",
      met: met(askRate / bareRate >= 0.5),
    },
    [`${int(MEM.actors * MEM.asksPerActor)} asks per timed run, each awaited before the next on its actor; best of ${MEM.reps}`],
  );
}

// ---- 2. durable throughput with group commit -----------------------------------------------------

const BASELINE_TABLE = "bench_baseline_journal";

/** The bare loop: `rows` rows into a table shaped like actor_journal, `batch` per transaction. */
async function bareInsert(store: Store, rows: number, batch: number, firstKey: number): Promise<number> {
  const values = (n: number) =>
    range(n).map((i) => `($${i * 6 + 1}, $${i * 6 + 2}, $${i * 6 + 3}, $${i * 6 + 4}, $${i * 6 + 5}, $${i * 6 + 6}::text::jsonb)`).join(", ");
  const sqlFor = new Map<number, string>();
  const statement = (n: number) => {
    let s = sqlFor.get(n);
    if (!s) sqlFor.set(n, (s = `insert into ${BASELINE_TABLE} (kind, actor_id, seq, version, at, event) values ${values(n)}`));
    return s;
  };
  statement(batch);
  statement(rows % batch || batch);
  const t = now();
  for (let done = 0; done < rows; ) {
    const n = Math.min(batch, rows - done);
    const params: unknown[] = [];
    const at = Date.now();
    for (let i = 0; i < n; i++) {
      const key = firstKey + done + i;
      params.push("dur", `b${key % DURABLE.actors}`, key, 1, at, JSON.stringify({ ...EVENT, at }));
    }
    await store.transaction((tx) => tx.query(statement(n), params));
    done += n;
  }
  return now() - t;
}

async function durable(store: Store, label: "PostgreSQL" | "PGlite", sizes: { asksPerActor: number; burst: number; rounds: number }): Promise<void> {
  await store.exec(`create table if not exists ${BASELINE_TABLE} (like actor_journal including all)`);
  const rec = { on: false, commits: 0, events: 0, writes: 0, ms: 0 };
  const system = new ActorSystem({
    store,
    askTimeoutMs: 60_000,
    onCommit: (s) => {
      if (!rec.on) return;
      rec.commits++;
      rec.events += s.events;
      rec.writes += s.writes;
      rec.ms += s.ms;
    },
  }).register(benchKind("dur"));
  await system.start();
  const addresses = range(DURABLE.actors).map((i) => `dur/d${i}`);
  const asks = async (perActor: number) => {
    await Promise.all(addresses.map(async (a) => {
      for (let i = 0; i < perActor; i++) await system.ask(a, EVENT);
    }));
  };
  // Producers send a burst to every actor, then wait until it is durable. With `window` 2 they
  // send burst r+1 before waiting for burst r, so stepping new events overlaps the commit.
  const bursts = async (burst: number, rounds: number, window: 1 | 2) => {
    let previous: Promise<unknown> | null = null;
    for (let r = 0; r < rounds; r++) {
      for (const a of addresses) for (let k = 0; k < burst; k++) system.send(a, EVENT);
      const current = Promise.all(addresses.map((a) => system.inspect(a)));
      if (window === 1) await current;
      else if (previous) await previous;
      previous = current;
    }
    await previous;
  };
  // Activation (marks each actor active) and warm-up, untimed.
  await Promise.all(addresses.map((a) => system.ask(a, EVENT)));
  await asks(10);
  await bursts(sizes.burst, 2, 2);

  let baselineKey = 0;
  const measure = async (events: number, run: () => Promise<void>) => {
    let best = { runtime: 0, baseline: 0, batch: 0, writes: 0 };
    const samples: string[] = [];
    for (let rep = 0; rep < DURABLE.reps; rep++) {
      Object.assign(rec, { on: true, commits: 0, events: 0, writes: 0, ms: 0 });
      const t = now();
      await run();
      const tr = now() - t;
      rec.on = false;
      const batch = rec.events / rec.commits;
      const batchRows = Math.max(1, Math.round(batch));
      const baselineMs = await bareInsert(store, events, batchRows, baselineKey);
      const transactions = Math.ceil(events / batchRows);
      baselineKey += events;
      const r = rate(events, tr);
      const b = rate(events, baselineMs);
      samples.push(
        `rep ${rep + 1}: runtime ${fmtRate(r)}: ${rec.commits} commits of ${batch.toFixed(1)} events (${(rec.writes / rec.commits).toFixed(1)} writes), ` +
          `${(rec.ms / rec.commits).toFixed(2)} ms each, a commit in flight ${((100 * rec.ms) / tr).toFixed(0)}% of the time; ` +
          `bare INSERT loop ${fmtRate(b)}: ${transactions} transactions, ${(baselineMs / transactions).toFixed(2)} ms each`,
      );
      if (r > best.runtime) best = { ...best, runtime: r, batch, writes: rec.writes / rec.commits };
      best.baseline = Math.max(best.baseline, b);
    }
    return { ...best, samples };
  };

  const askEvents = DURABLE.actors * sizes.asksPerActor;
  const a = await measure(askEvents, () => asks(sizes.asksPerActor));
  const burstEvents = DURABLE.actors * sizes.burst * sizes.rounds;
  const b1 = await measure(burstEvents, () => bursts(sizes.burst, sizes.rounds, 1));
  const b2 = await measure(burstEvents, () => bursts(sizes.burst, sizes.rounds, 2));

  const total = 1 + 10 + 2 * sizes.burst + (sizes.asksPerActor + 2 * sizes.burst * sizes.rounds) * DURABLE.reps;
  const [row] = await store.query<{ n: number }>("select count(*)::int as n from actor_journal where kind = 'dur' and actor_id = 'd0'");
  if (Number(row?.n) !== total) throw new Error(`${label}: journal of dur/d0 has ${row?.n} rows, expected ${total}`);
  await system.stop();

  const floor = label === "PostgreSQL" ? 20_000 : 0;
  for (const [name, m, events, how] of [
    ["ask loops", a, askEvents, `${DURABLE.actors} concurrent ask loops x ${sizes.asksPerActor} asks (each waits until durable)`],
    ["send bursts", b1, burstEvents, `${sizes.rounds} bursts of ${sizes.burst} sends to each of ${DURABLE.actors} actors, each burst awaited durable before the next`],
    ["send bursts, 2 in flight", b2, burstEvents, `${sizes.rounds} bursts of ${sizes.burst} sends to each of ${DURABLE.actors} actors; burst r+1 is sent before burst r is awaited durable`],
  ] as const) {
    const ratio = m.runtime / m.baseline;
    const ok = ratio >= 0.7 && m.runtime >= floor;
    report(
      {
        figure: `2. durable throughput, group commit, ${label}, ${DURABLE.actors} actors, ${name}`,
        measured: `${fmtRate(m.runtime)} (avg batch ${m.batch.toFixed(1)} events)`,
        baseline: `${fmtRate(m.baseline)} (bare loop: one ${m.batch.toFixed(0)}-row INSERT per transaction)`,
        ratio: ratio.toFixed(3),
        goal: floor ? ">= 0.7 and >= 20,000 events/s" : ">= 0.7",
        met: met(ok),
      },
      [`${int(events)} events per timed run: ${how}; best of ${DURABLE.reps}`, ...m.samples],
    );
  }
}

// ---- 3. recovery ----------------------------------------------------------------------------------

async function recovery(store: Store, label: "PostgreSQL" | "PGlite", reps: number): Promise<void> {
  const { actors, events } = RECOVERY;
  await store.exec("truncate actor_journal, actor_snapshots, actor_timers, actors");
  const t0 = Date.now() - 3_600_000;
  // What a crashed process leaves: every actor 'active', its events journaled, no snapshot yet
  // (20 events is below snapshotEvery), written here in bulk by the database itself.
  let t = now();
  await store.query(`insert into actors (kind, actor_id, status, updated_at)
    select 'rcv', 'r' || i, 'active', ${t0} from generate_series(1, ${actors}) i`);
  await store.query(`insert into actor_journal (kind, actor_id, seq, version, at, event)
    select 'rcv', 'r' || i, s, 1, ${t0} + s, jsonb_build_object('type', 'add', 'n', 1, 'at', ${t0} + s)
      from generate_series(1, ${actors}) i cross join generate_series(1, ${events}) s`);
  await store.exec("analyze");
  const seedMs = now() - t;

  const select = "select kind, actor_id, seq, version, at, event from actor_journal order by kind, actor_id, seq";
  await store.query(select); // warm the cache for both sides
  let bestSelect = Infinity;
  let bestRecovery = Infinity;
  let bestLoad = Infinity;
  const samples: string[] = [];
  for (let rep = 0; rep < reps; rep++) {
    if (rep > 0) {
      // Back to the crashed state: the previous rep's graceful stop snapshotted everyone and
      // marked them passive. Vacuum so its dead rows do not slow the next rep's queries.
      await store.query("update actors set status = 'active' where kind = 'rcv'");
      await store.query("delete from actor_snapshots where kind = 'rcv'");
      await store.exec("vacuum analyze actors, actor_snapshots");
    }
    gc();
    t = now();
    const rows = await store.query(select);
    const ts = now() - t;
    if (rows.length !== actors * events) throw new Error(`${label}: read ${rows.length} journal rows, expected ${actors * events}`);
    gc();
    t = now();
    const system = new ActorSystem({ store }).register(benchKind("rcv"));
    const started = await system.start();
    const tr = now() - t;
    if (started.recovered !== actors) throw new Error(`${label}: recovered ${started.recovered} actors, expected ${actors}`);
    const probe = await system.inspect(`rcv/r${actors}`);
    if ((probe.context as { count: number }).count !== events) throw new Error(`${label}: recovered actor has the wrong state`);
    // The recovery's own queries, timed alone, to split database time from replay time.
    gc();
    t = now();
    const loaded = await loadActiveActors(store);
    const tl = now() - t;
    if (loaded.length !== actors) throw new Error(`${label}: loadActiveActors returned ${loaded.length}`);
    t = now();
    await system.stop();
    const tstop = now() - t;
    samples.push(`rep ${rep + 1}: SELECT ${ms(ts)}, recovery ${ms(tr)} (its loadActiveActors queries alone: ${ms(tl)}), then graceful stop snapshotting ${int(actors)} actors ${ms(tstop)}`);
    bestSelect = Math.min(bestSelect, ts);
    bestRecovery = Math.min(bestRecovery, tr);
    bestLoad = Math.min(bestLoad, tl);
  }
  const ratio = bestRecovery / bestSelect;
  const goal = label === "PostgreSQL" ? 2_000 : null;
  report(
    {
      figure: `3. recovery of ${int(actors)} actors x ${events} journaled events, ${label}`,
      measured: `${ms(bestRecovery)} (new ActorSystem().register(); await start())`,
      baseline: `${ms(bestSelect)} (one SELECT of the ${int(actors * events)} journal rows)`,
      ratio: `${ratio.toFixed(2)}x the SELECT`,
      goal: goal ? "<= 2,000 ms" : "- (PostgreSQL goal <= 2 s)",
      met: goal ? met(bestRecovery <= goal) : "-",
    },
    [
      `seeded in bulk by INSERT ... SELECT generate_series (+ ANALYZE) in ${ms(seedMs)}; best of ${reps}`,
      `of the recovery, the two loadActiveActors queries take ~${ms(bestLoad)}; the rest is replaying ${int(actors * events)} events through the logic and building cells`,
      ...samples,
    ],
  );
}

// ---- 4. heap per resident idle actor ---------------------------------------------------------------

async function heap(): Promise<void> {
  const n = HEAP.actors;
  const heapNow = () => {
    gc();
    return heapSize();
  };
  // Baseline: bare XState actors, started, one event each.
  let h0 = heapNow();
  let bare = range(n).map((i) => {
    const actor = createActor(benchLogic, { input: { id: `h${i}` } }).start();
    actor.send(EVENT);
    return actor;
  });
  const bareBytes = (heapNow() - h0) / n;
  for (const a of bare) a.stop();
  bare = [];

  const system = new ActorSystem({ store: openNoopStore() }).register(benchKind("heap"));
  await system.start();
  await system.ask("heap/warm", EVENT);
  h0 = heapNow();
  const addresses = range(n).map((i) => `heap/h${i}`);
  for (let i = 0; i < n; i += 1_000) await Promise.all(addresses.slice(i, i + 1_000).map((a) => system.ask(a, EVENT)));
  addresses.length = 0; // the address strings stay alive only as the system's own keys
  const runtimeBytes = (heapNow() - h0) / n;
  const resident = system.stats().kinds.get("heap")?.resident;
  if (resident !== n + 1) throw new Error(`heap: ${resident} resident actors, expected ${n + 1}`);
  await system.stop();

  report(
    {
      figure: `4. heap per resident idle actor (${int(n)} actors, one event each)`,
      measured: `${int(runtimeBytes)} bytes/actor`,
      baseline: `${int(bareBytes)} bytes/actor (bare XState createActor().start(), one send)`,
      ratio: (runtimeBytes / bareBytes).toFixed(2),
      goal: "<= 4,096 bytes/actor",
      met: met(runtimeBytes <= 4096),
    },
    ["heapSize() from bun:jsc after Bun.gc(true), before and after activating the actors"],
  );
}

// ---- databases ------------------------------------------------------------------------------------

async function withPglite(fn: (store: Store) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tether-bench-"));
  const store = await openStore({ dataDir: dir });
  try {
    await applySchema(store);
    await fn(store);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function withPostgres(url: string, fn: (store: Store) => Promise<void>): Promise<void> {
  const schema = `bench_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create schema ${schema}`);
  try {
    const store = await openStore({ databaseUrl: url, dataDir: "", searchPath: schema });
    try {
      await applySchema(store);
      await fn(store);
    } finally {
      await store.close();
    }
  } finally {
    await admin.unsafe(`drop schema ${schema} cascade`);
    await admin.end();
  }
}

// ---- main ----------------------------------------------------------------------------------------

/** BENCH_ONLY=memory,heap,durable,recovery runs only those figures (all by default). */
const only = process.env.BENCH_ONLY?.split(",").map((x) => x.trim()).filter(Boolean);
const want = (name: "memory" | "heap" | "durable" | "recovery") => !only || only.includes(name);


async function main(): Promise<void> {
  const started = now();
  const url = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
  console.log(`Tether actor runtime benchmark: Bun ${Bun.version}, ${navigator.hardwareConcurrency} cores`);

  if (want("memory")) await inMemory();
  if (want("heap")) await heap();
  if (!want("durable") && !want("recovery")) {
    // no database figures asked for
  } else if (url) {
    const [v] = await (async () => {
      const s = postgres(url, { max: 1 });
      try {
        return await s<{ server_version: string }[]>`show server_version`;
      } finally {
        await s.end();
      }
    })();
    console.log(`\nPostgreSQL ${v?.server_version} at ${url.replace(/\/\/[^@]*@/, "//")}`);
    await withPostgres(url, async (store) => {
      if (want("durable")) await durable(store, "PostgreSQL", DURABLE.postgres);
      if (want("recovery")) await recovery(store, "PostgreSQL", RECOVERY.reps.postgres);
    });
  } else {
    console.log("\nBENCH_DATABASE_URL and TEST_DATABASE_URL are not set: skipping the PostgreSQL figures.");
  }
  if (want("durable") || want("recovery")) {
    await withPglite(async (store) => {
      if (want("durable")) await durable(store, "PGlite", DURABLE.pglite);
      if (want("recovery")) await recovery(store, "PGlite", RECOVERY.reps.pglite);
    });
  }

  console.log(`\n## Summary (${((now() - started) / 1000).toFixed(0)} s)\n`);
  console.log("| figure | measured | baseline (same run) | ratio | goal | met |");
  console.log("| --- | --- | --- | --- | --- | --- |");
  for (const f of figures) console.log(`| ${f.figure} | ${f.measured} | ${f.baseline} | ${f.ratio} | ${f.goal} | ${f.met} |`);
}

await main();
