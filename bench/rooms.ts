/**
 * Rooms (issue 6, requirement 8): `bun bench/rooms.ts`; BENCH_QUICK=1 for a short run.
 *
 * A real server process (bench/fixtures/rooms-server.ts), a bare Bun WebSocket fan-out in a
 * process of its own (bench/fixtures/bare-rooms.ts: Bun.serve, ws.subscribe, server.publish; no
 * Tether logic), and a load process (bench/fixtures/room-load.ts: raw-socket WebSocket
 * subscribers and keep-alive HTTP posters, so that the load is cheap next to what it drives).
 * This process only orchestrates and reads CPU times from /proc.
 *
 * (a) Fan-out of one room to SUBS WebSocket subscribers (/ws/rooms/:id, bearer token): FANOUT_N
 *     messages posted with POST /api/rooms/:id/messages from POSTERS connections, never more
 *     than WINDOW messages ahead of the slowest subscriber (so no subscriber reaches the
 *     slow-consumer limit). Timed from the first post until every subscriber has every
 *     message; delivered messages per second = FANOUT_N × SUBS / time. Baseline in the same
 *     run, to the same number of sockets of the same load process: the bare server sends
 *     FANOUT_N frames of the same size, both with server.publish (uWS topic) and with a JS loop
 *     of ws.send; the faster of the two is the baseline. Goal: ratio >= 0.7.
 * (b) Persisted messages accepted per second across ROOMS rooms: CONNS_PER_ROOM keep-alive
 *     connections per room, each posting in a row; a message counts when its 201 is back (it
 *     is committed then). The table is counted afterwards. Goal >= 5,000/s on PostgreSQL.
 * (c) Post-to-delivery latency with LAT_SUBS subscribers: one post every 1000/LAT_RATE ms for
 *     LAT_MS; each subscriber notes when each message arrives (same process and clock as the
 *     poster). p50/p99 over all deliveries. Baseline: the bare server's POST /post, which
 *     publishes at once. Goal p99 <= 20 ms.
 *
 * PGlite always; PostgreSQL too with BENCH_DATABASE_URL (or TEST_DATABASE_URL): a schema of its
 * own in the database `bench_rooms` (created if missing), dropped at the end.
 * Env: BENCH_QUICK=1, BENCH_ONLY=pglite|postgres, BENCH_ROOMS_PARTS=a,b,c, BENCH_PROFILE=<dir> (server CPU profile).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Child } from "./fixtures/ipc-child.ts";
import { withBenchSchema } from "./fixtures/pg-schema.ts";
import type { LoadRequest, PostTarget } from "./fixtures/room-load.ts";
import { BENCH_PASSWORD, benchApi, startBenchServer } from "./fixtures/server-process.ts";

const QUICK = process.env.BENCH_QUICK === "1";
const PARTS = new Set((process.env.BENCH_ROOMS_PARTS ?? "a,b,c").split(","));
const SUBS = 1_000;
const FANOUT_N = QUICK ? 1_000 : 3_000;
const POSTERS = Number(process.env.BENCH_POSTERS ?? 200);
const WINDOW = Number(process.env.BENCH_WINDOW ?? 1_000);
const FANOUT_REPS = QUICK ? 2 : 3;
const ROOMS = Number(process.env.BENCH_TPUT_ROOMS ?? 100);
const CONNS_PER_ROOM = Number(process.env.BENCH_TPUT_CONNS ?? 2);
const PER_ROOM = QUICK ? 60 : 200;
const TPUT_REPS = QUICK ? 1 : 2;
const LAT_SUBS = 100;
const LAT_RATE = 200;
const LAT_MS = QUICK ? 3_000 : 6_000;
const GOAL_FANOUT = 0.7;
const GOAL_TPUT = 5_000;
const GOAL_P99 = 20;
/** A chat line of the usual size. */
const BODY = "Rebooting the print server now; the queue should drain in about two minutes, tell me if it does not.";

type Load = Child<LoadRequest>;
const newLoad = (): Load => new Child<LoadRequest>("load", "bench/fixtures/room-load.ts");

/** The real server (or a bare baseline) as its own process; BENCH_PROFILE=<dir> profiles the server. */
function spawnServer(script: string, env: Record<string, string>) {
  const prof = process.env.BENCH_PROFILE && script.includes("rooms-server") ? ["--cpu-prof-md", `--cpu-prof-dir=${process.env.BENCH_PROFILE}`] : [];
  return startBenchServer(env, { script, args: prof });
}

async function stop(proc: ReturnType<typeof Bun.spawn>) {
  proc.kill("SIGTERM");
  const t = setTimeout(() => proc.kill("SIGKILL"), 20_000);
  await proc.exited;
  clearTimeout(t);
}

/** utime + stime of a process, in seconds. */
const cpuOf = (pid: number) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
};
/** All PostgreSQL processes' CPU (the database runs on the same two cores). */
function postgresCpu(): number {
  let s = 0;
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      if (stat.includes("(postgres)")) s += cpuOf(Number(d));
    } catch {}
  }
  return s;
}
async function quiet(pid: number) {
  const deadline = Date.now() + 20_000;
  let last = cpuOf(pid);
  while (Date.now() < deadline) {
    await Bun.sleep(300);
    const now = cpuOf(pid);
    if (now - last < 0.03) return;
    last = now;
  }
}
const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");

interface Cpu {
  server: number;
  load: number;
  db: number;
  wall: number;
}
/** Runs f and measures the CPU seconds of the server, the load and PostgreSQL meanwhile. */
async function measured<T>(server: number, load: number, pg: boolean, f: () => Promise<T>): Promise<[T, Cpu]> {
  const s0 = cpuOf(server), l0 = cpuOf(load), d0 = pg ? postgresCpu() : 0, t0 = performance.now();
  const r = await f();
  return [r, { server: cpuOf(server) - s0, load: cpuOf(load) - l0, db: pg ? Math.max(0, postgresCpu() - d0) : 0, wall: (performance.now() - t0) / 1000 }];
}
const cores = (c: Cpu) => `CPU (cores): server ${(c.server / c.wall).toFixed(2)}, load ${(c.load / c.wall).toFixed(2)}${c.db ? `, postgres ${(c.db / c.wall).toFixed(2)}` : ""}`;

const fmt = (n: number, d = 0) => n.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))] ?? NaN;


interface Result {
  label: string;
  fanout: Array<{ real: number; publish: number; send: number; cpuReal: Cpu; cpuBare: Cpu }>;
  tput: Array<{ rate: number; ok: number; stored: number; p50: number; p99: number; cpu: Cpu; statuses: Record<number, number> }>;
  lat: { real: number[]; bare: number[]; cpu?: Cpu };
  notes: string[];
}

async function run(label: string, env: Record<string, string>, load: Load, bare: { proc: ReturnType<typeof Bun.spawn>; url: string }, pg: boolean): Promise<Result> {
  console.log(`\n${label} (load average ${loadavg()})`);
  const { proc, url } = await spawnServer("bench/fixtures/rooms-server.ts", env);
  const r: Result = { label, fanout: [], tput: [], lat: { real: [], bare: [] }, notes: [] };
  try {
    const admin = (await benchApi(url, "POST", "/api/auth/login", null, { username: "admin", password: BENCH_PASSWORD })).token as string;
    const password = "bench-technician-password";
    await benchApi(url, "POST", "/api/users", admin, { username: "bench-tech", role: "technician", password });
    const token = (await benchApi(url, "POST", "/api/auth/login", null, { username: "bench-tech", password })).token as string;
    const room = async (name: string) => (await benchApi(url, "POST", "/api/rooms", token, { name })).id as string;
    const wsUrl = url;
    const target = (id: string): PostTarget => ({ url, path: `/api/rooms/${id}/messages`, token });
    const bodyJson = JSON.stringify({ body: BODY });

    if (PARTS.has("c")) {
      const id = await room("latency");
      await load.call({ t: "subscribe", set: "lat", url: wsUrl, path: `/ws/rooms/${id}`, token, n: LAT_SUBS, waitLive: true });
      await load.call({ t: "subscribe", set: "latbare", url: bare.url, path: "/ws", token: "-", n: LAT_SUBS, waitLive: true });
      await load.call({ t: "latency", set: "lat", post: target(id), rate: LAT_RATE, ms: 500, bare: false }); // warm-up
      await quiet(bare.proc.pid);
      const b = await load.call<any>({ t: "latency", set: "latbare", post: { url: bare.url, path: "/post", token: "-" }, rate: LAT_RATE, ms: LAT_MS, bare: true });
      await quiet(proc.pid);
      const [l, cpu] = await measured(proc.pid, load.proc.pid, pg, () => load.call<any>({ t: "latency", set: "lat", post: target(id), rate: LAT_RATE, ms: LAT_MS, bare: false }));
      r.lat = { real: l.lat, bare: b.lat, cpu };
      if (l.failed || l.skipped || l.lat.length !== l.posted * LAT_SUBS) r.notes.push(`(c) ${l.failed} failed, ${l.skipped} skipped, ${l.lat.length} of ${l.posted * LAT_SUBS} deliveries, closes ${JSON.stringify(l.closed)}`);
      const s = (xs: number[]) => {
        const sorted = [...xs].sort((x, y) => x - y);
        return `p50 ${fmt(pct(sorted, 50), 2)} / p99 ${fmt(pct(sorted, 99), 2)} / max ${fmt(sorted.at(-1)!, 1)} ms (${fmt(xs.length)} deliveries)`;
      };
      console.log(`  (c) ${LAT_SUBS} subscribers, ${LAT_RATE} posts/s: Tether ${s(l.lat)} (${cores(cpu)}); bare ${s(b.lat)}`);
      console.log(`      slowest posts (sent at: worst delivery ms): Tether ${l.slow.join(" ")}; bare ${b.slow.join(" ")}`);
      await load.call({ t: "unsubscribe", set: "lat" });
      await load.call({ t: "unsubscribe", set: "latbare" });
    }

    if (PARTS.has("a")) {
      const id = await room("fan-out");
      let t = performance.now();
      await load.call({ t: "subscribe", set: "real", url: wsUrl, path: `/ws/rooms/${id}`, token, n: SUBS, waitLive: true });
      console.log(`  (a) ${SUBS} subscribers on /ws/rooms/:id live in ${fmt((performance.now() - t) / 1000, 2)} s`);
      await load.call({ t: "subscribe", set: "bare", url: bare.url, path: "/ws", token: "-", n: SUBS, waitLive: true });
      // Warm-up: both sides once, not counted.
      await load.call({ t: "fanout", set: "real", n: 100, post: target(id), concurrency: POSTERS, window: WINDOW, body: bodyJson });
      await load.call({ t: "burst", set: "bare", n: 100, url: bare.url, mode: "publish", body: BODY });
      for (let rep = 0; rep < FANOUT_REPS; rep++) {
        await quiet(bare.proc.pid);
        const [p, cpuBare] = await measured(bare.proc.pid, load.proc.pid, false, () => load.call<any>({ t: "burst", set: "bare", n: FANOUT_N, url: bare.url, mode: "publish", body: BODY }));
        const [s] = await measured(bare.proc.pid, load.proc.pid, false, () => load.call<any>({ t: "burst", set: "bare", n: FANOUT_N, url: bare.url, mode: "send", body: BODY }));
        await quiet(proc.pid);
        const st0 = await benchApi(url, "GET", "/bench/rooms/stats", null);
        const [f, cpuReal] = await measured(proc.pid, load.proc.pid, pg, () => load.call<any>({ t: "fanout", set: "real", n: FANOUT_N, post: target(id), concurrency: POSTERS, window: WINDOW, body: bodyJson }));
        const st1 = await benchApi(url, "GET", "/bench/rooms/stats", null);
        f.perBatch = (st1.batched - st0.batched) / Math.max(1, st1.batches - st0.batches);
        const rate = (x: { ms: number; delivered: number }) => (x.delivered / x.ms) * 1000;
        const row = { real: rate(f), publish: rate(p), send: rate(s), cpuReal, cpuBare };
        r.fanout.push(row);
        if (f.failed || Object.keys(f.closed).length || f.delivered !== FANOUT_N * SUBS) r.notes.push(`(a) rep ${rep + 1}: ${f.failed} failed posts, ${f.delivered} of ${FANOUT_N * SUBS} delivered, closes ${JSON.stringify(f.closed)}`);
        console.log(`  (a) rep ${rep + 1}: Tether ${fmt(row.real)} msg/s (${fmt(f.ms)} ms, posts done at ${fmt(f.postedMs)} ms, post p50 ${fmt(f.p50, 1)} / p99 ${fmt(f.p99, 1)} ms, ${f.waits} window waits, ${fmt(f.perBatch, 1)} messages per insert; ${cores(cpuReal)}); bare publish ${fmt(row.publish)} msg/s (${fmt(p.ms)} ms, ${p.server.pauses} pauses; ${cores(cpuBare)}); bare ws.send loop ${fmt(row.send)} msg/s`);
      }
      await load.call({ t: "unsubscribe", set: "real" });
      await load.call({ t: "unsubscribe", set: "bare" });
    }

    if (PARTS.has("b")) {
      const ids: string[] = [];
      for (let i = 0; i < ROOMS; i++) ids.push(await room(`throughput-${i}`));
      const targets = ids.map(target);
      await load.call({ t: "throughput", targets, perTarget: 10, connectionsPerTarget: CONNS_PER_ROOM, body: bodyJson }); // warm-up
      for (let rep = 0; rep < TPUT_REPS; rep++) {
        await quiet(proc.pid);
        const st0 = await benchApi(url, "GET", "/bench/rooms/stats", null);
        const before = st0.stored as number;
        const [x, cpu] = await measured(proc.pid, load.proc.pid, pg, () => load.call<any>({ t: "throughput", targets, perTarget: PER_ROOM, connectionsPerTarget: CONNS_PER_ROOM, body: bodyJson }));
        const st1 = await benchApi(url, "GET", "/bench/rooms/stats", null);
        const stored = (st1.stored as number) - before;
        const perInsert = (st1.batched - st0.batched) / Math.max(1, st1.batches - st0.batches);
        const rate = (x.ok / x.ms) * 1000;
        r.tput.push({ rate, ok: x.ok, stored, p50: x.p50, p99: x.p99, cpu, statuses: x.statuses });
        if (stored !== x.ok || Object.keys(x.statuses).length) r.notes.push(`(b) rep ${rep + 1}: ${x.ok} acknowledged, ${stored} stored, other statuses ${JSON.stringify(x.statuses)}`);
        console.log(`  (b) rep ${rep + 1}: ${fmt(x.ok)} posts to ${ROOMS} rooms (${ROOMS * CONNS_PER_ROOM} connections) in ${fmt(x.ms)} ms: ${fmt(rate)} msg/s, ${fmt(stored)} stored, ${fmt(perInsert, 1)} per insert; post p50 ${fmt(x.p50, 1)} / p99 ${fmt(x.p99, 1)} ms (${cores(cpu)})`);
      }
    }
    const stats = await benchApi(url, "GET", "/bench/rooms/stats", null);
    if (stats.dropped) r.notes.push(`the hub dropped ${stats.dropped} subscribers as too slow`);
    return r;
  } finally {
    await stop(proc);
  }
}

function summary(r: Result) {
  const rows: string[][] = [];
  if (r.fanout.length) {
    const real = Math.max(...r.fanout.map((x) => x.real));
    const pub = Math.max(...r.fanout.map((x) => x.publish));
    const send = Math.max(...r.fanout.map((x) => x.send));
    const base = Math.max(pub, send);
    const q = Math.floor((real / base) * 100) / 100; // shown as measured, not rounded up to the goal
    const range = (xs: number[]) => `${fmt(Math.min(...xs))}–${fmt(Math.max(...xs))}`;
    rows.push([`(a) fan-out, 1 room → ${SUBS} WebSockets, delivered msg/s`, `${fmt(real)} (${range(r.fanout.map((x) => x.real))})`,
      `${fmt(base)}, bare ${pub >= send ? "server.publish" : "ws.send loop"} (publish ${range(r.fanout.map((x) => x.publish))}; send loop ${range(r.fanout.map((x) => x.send))})`,
      fmt(q, 2), `≥ ${GOAL_FANOUT}`, q >= GOAL_FANOUT ? "yes" : "NO"]);
  }
  if (r.tput.length) {
    const best = Math.max(...r.tput.map((x) => x.rate));
    rows.push([`(b) persisted msg/s, ${ROOMS} rooms, ${ROOMS * CONNS_PER_ROOM} posting connections`, `${fmt(best)} (${r.tput.map((x) => fmt(x.rate)).join(", ")})`, "", "", `≥ ${fmt(GOAL_TPUT)}/s (PostgreSQL)`, best >= GOAL_TPUT ? "yes" : "NO"]);
  }
  if (r.lat.real.length) {
    const t = [...r.lat.real].sort((a, b) => a - b);
    const b = [...r.lat.bare].sort((a, b) => a - b);
    rows.push([`(c) post → delivery, ${LAT_SUBS} subscribers, ${LAT_RATE} posts/s`, `p50 ${fmt(pct(t, 50), 2)} / p99 ${fmt(pct(t, 99), 2)} ms`, `p50 ${fmt(pct(b, 50), 2)} / p99 ${fmt(pct(b, 99), 2)} ms, bare publish`, "", `p99 ≤ ${GOAL_P99} ms`, pct(t, 99) <= GOAL_P99 ? "yes" : "NO"]);
  }
  console.log(`\nSummary, ${r.label}: best of ${FANOUT_REPS} fan-out reps (${fmt(FANOUT_N)} messages each), ${TPUT_REPS} throughput reps (${fmt(ROOMS * PER_ROOM)} posts each)`);
  console.log("  figure | Tether | baseline, same run | ratio | goal | met");
  for (const row of rows) console.log(`  ${row.join(" | ")}`);
  for (const n of r.notes) console.log(`  NOTE: ${n}`);
}

const cpu = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.+)/)?.[1] ?? "unknown CPU";
console.log(`bun ${Bun.version}, ${navigator.hardwareConcurrency} cores, ${cpu}${QUICK ? " (quick)" : ""}`);
const limit = Number(readFileSync("/proc/self/limits", "utf8").match(/Max open files\s+(\d+)/)?.[1] ?? 0);
if (limit && limit < 2 * SUBS + 1_000) throw new Error(`open files limit ${limit} is too low for ${2 * SUBS} sockets: raise it (ulimit -n 65536)`);
const only = process.env.BENCH_ONLY;
const dataDir = mkdtempSync(join(tmpdir(), "tether-bench-rooms-"));
const load = newLoad();
const bare = await spawnServer("bench/fixtures/bare-rooms.ts", {});
const results: Result[] = [];
const deadline = setTimeout(() => {
  console.error("bench/rooms.ts: over 10 minutes; giving up");
  bare.proc.kill("SIGKILL");
  load.proc.kill("SIGKILL");
  process.exit(2);
}, 600_000);
try {
  await load.ready;
  if (only !== "postgres") results.push(await run("PGlite", { TETHER_DATA_DIR: join(dataDir, "pglite"), DATABASE_URL: "" }, load, bare, false));
  const pgUrl = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
  if (pgUrl && only !== "pglite") {
    await withBenchSchema(pgUrl, "bench_rooms", async (db) => {
      results.push(await run("PostgreSQL", db.env, load, bare, true));
    });
  } else if (!pgUrl) console.log("\nPostgreSQL: skipped (set BENCH_DATABASE_URL)");
  for (const r of results) summary(r);
} finally {
  clearTimeout(deadline);
  await stop(bare.proc);
  load.proc.kill("SIGKILL");
  await load.proc.exited;
  rmSync(dataDir, { recursive: true, force: true });
}
