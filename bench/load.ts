/**
 * Load (issue 8, requirement 6): `bun bench/load.ts`; BENCH_QUICK=1 for a short run.
 *
 * N simulated agents, M active sessions and R rooms against a real server in a process of its
 * own (bench/fixtures/load-server.ts: the real server plus routes that report event-loop lag
 * and database time), for a fixed time per step, on loopback. The load is three processes, each
 * an existing fixture driven over IPC:
 * - bench/fixtures/agent-swarm.ts: N − M agents doing the real Ed25519 handshake, a status with
 *   an inventory, then heartbeats every heartbeat_ms (the product default, 15 s);
 * - bench/fixtures/load-sessions.ts (bench/relay.ts's clients): M more agents, each with a
 *   session opened through the API, a control viewer, an output terminal written at
 *   OUTPUT_BPS × the step's multiplier, and a typing terminal (a key every TYPE_MS, echoed):
 *   terminal throughput and keystroke round trip;
 * - bench/fixtures/room-load.ts: R rooms with SUBS_PER_ROOM WebSocket subscribers each and one
 *   post per second per room × the multiplier (open loop, on a timer, 2 connections per room):
 *   posts accepted per second and post → delivery latency.
 * This process drives them, runs a light HTTP API mix (GET /api/machines?q=…, GET
 * /api/sessions, API_RPS requests a second, at most 4 in flight) and reads CPU time and RSS
 * of every process from /proc (PostgreSQL: the backends connected to the bench database).
 *
 * Steps (BENCH_STEPS, "scale×multiplier" separated by commas): a scale of the N/M/R counts (agents,
 * sessions and rooms are added, never removed, between steps) and a multiplier of the activity
 * (terminal output and room posts; keystrokes and API requests stay the same, as probes). The
 * default ramps up to 10,000 / 200 / 100 and then raises the activity to find the knee.
 *
 * Database: PostgreSQL with BENCH_DATABASE_URL (or TEST_DATABASE_URL; a schema of its own in the
 * database `bench_load`, dropped at the end), else PGlite; BENCH_ONLY=pglite forces PGlite.
 * Env: BENCH_QUICK=1, BENCH_AGENTS (N), BENCH_SESSIONS (M), BENCH_ROOMS (R), BENCH_STEPS,
 * BENCH_STEP_MS, BENCH_PROFILE=<dir> (the server writes a CPU profile there when it stops).
 * The whole run stops itself after 10 minutes (BENCH_DEADLINE_S); steps that would not fit are skipped.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { identities, seed } from "./fixtures/agent-keys.ts";
import type { SwarmRequest, SwarmStats, WaveResult } from "./fixtures/agent-swarm.ts";
import type { LoadSessionsRequest, RunResult } from "./fixtures/load-sessions.ts";
import { withBenchSchema } from "./fixtures/pg-schema.ts";
import type { LoadRequest, PostTarget } from "./fixtures/room-load.ts";
import { Child } from "./fixtures/ipc-child.ts";
import { BENCH_PASSWORD, benchApi, startBenchServer } from "./fixtures/server-process.ts";

const QUICK = process.env.BENCH_QUICK === "1";
const N = Number(process.env.BENCH_AGENTS ?? (QUICK ? 500 : 10_000));
const M = Number(process.env.BENCH_SESSIONS ?? (QUICK ? 10 : 200));
const R = Number(process.env.BENCH_ROOMS ?? (QUICK ? 5 : 100));
const STEPS = (process.env.BENCH_STEPS ?? (QUICK ? "0.5x1,1x1,1x8" : "0.25x1,0.5x1,1x1,1x4,1x16,1x32"))
  .split(",").map((s) => s.split("x").map(Number) as [number, number]);
const STEP_MS = Number(process.env.BENCH_STEP_MS ?? (QUICK ? 5_000 : 20_000));
const DEADLINE_MS = Number(process.env.BENCH_DEADLINE_S ?? 600) * 1000;
const OUTPUT_BPS = 4_096;
const TYPE_MS = 100;
const ROOM_RATE = 1;
const SUBS_PER_ROOM = 5;
const API_RPS = 20;
const API_INFLIGHT = 4;
const CONNECT_WAVE = 1_000;
const BODY = JSON.stringify({ body: "Rebooting the print server now; the queue should drain in about two minutes, tell me if it does not." });
const started = performance.now();
const left = () => DEADLINE_MS - (performance.now() - started);

// ---- /proc ------------------------------------------------------------------------------------

const cpuOf = (pid: number) => {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
};
const rssMb = (pid: number) => {
  try {
    return Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/)![1]) / 1024;
  } catch {
    return 0;
  }
};
/** Time the process's main (JS) thread spent runnable but waiting for a CPU, in seconds (/proc/<pid>/schedstat). */
const runDelay = (pid: number) => {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, "utf8").split(" ")[1]) / 1e9;
  } catch {
    return 0;
  }
};
const loadavg = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");
/** CPU seconds of the whole machine (all cores, not idle), from /proc/stat. */
const machineCpu = () => {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (f.reduce((a, b) => a + b, 0) - f[3]! - f[4]!) / 100;
};

const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))] ?? NaN;
const fmt = (n: number, d = 0) => (Number.isFinite(n) ? n.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }) : "–");


/** The API mix: open loop at API_RPS, at most API_INFLIGHT in flight (a request due while all are busy is skipped). */
async function apiProbe(url: string, token: string, ms: number) {
  const kinds = {
    "machines?q": [] as number[],
    sessions: [] as number[],
  };
  const queries = () => {
    const r = Math.floor(Math.random() * N);
    return [`AGENT-${String(r).padStart(5, "0")}`, "ubuntu", `user${r}`, "os:debian", `10.0.${r & 255}.`][r % 5]!;
  };
  let inflight = 0;
  let skipped = 0;
  let failed = 0;
  const total = Math.round((ms / 1000) * API_RPS);
  const t0 = performance.now();
  const all: Promise<void>[] = [];
  for (let i = 0; i < total; i++) {
    const wait = t0 + (i * 1000) / API_RPS - performance.now();
    if (wait > 0) await Bun.sleep(wait);
    if (inflight >= API_INFLIGHT) {
      skipped++;
      continue;
    }
    const kind = i % 2 === 0 ? "machines?q" : "sessions";
    const path = kind === "sessions" ? "/api/sessions" : `/api/machines?q=${encodeURIComponent(queries())}&limit=50`;
    inflight++;
    const s = performance.now();
    all.push(fetch(url + path, { headers: { authorization: `Bearer ${token}` } }).then(async (res) => {
      await res.arrayBuffer();
      if (!res.ok) failed++;
      kinds[kind].push(performance.now() - s);
    }, () => void failed++).finally(() => void inflight--));
  }
  await Promise.all(all);
  const stat = (xs: number[]) => {
    const s = xs.sort((a, b) => a - b);
    return { n: s.length, p50: pct(s, 50), p99: pct(s, 99) };
  };
  return { machines: stat(kinds["machines?q"]), sessions: stat(kinds.sessions), skipped, failed };
}

// ---- one run ------------------------------------------------------------------------------------

interface Sample {
  lag: { n: number; p50: number; p99: number; max: number };
  db: { queries: number; queryMs: number; transactions: number; transactionMs: number; top: Array<{ sql: string; n: number; ms: number; max: number }> };
  heapBytes: number;
}

interface StepResult {
  scale: number;
  mult: number;
  agents: number;
  online: number;
  sessions: number;
  rooms: number;
  wall: number;
  heartbeatsPerS: number;
  sess: RunResult;
  offeredOutputMiBs: number;
  rooms_: { offered: number; posted: number; accepted: number; skipped: number; failed: number; perS: number; p50: number; p99: number; deliveries: number; expected: number };
  apiR: Awaited<ReturnType<typeof apiProbe>>;
  cpu: Record<string, number>;
  rss: Record<string, number>;
  sample: Sample;
  unexpected: Record<string, number>;
}

async function run(label: string, env: Record<string, string>, file: string, pgDb: string | null, pgUrl: string | null): Promise<StepResult[]> {
  const profile = process.env.BENCH_PROFILE;
  const { proc, url } = await startBenchServer(env, { script: "bench/fixtures/load-server.ts", args: profile ? ["--cpu-prof-md", `--cpu-prof-dir=${profile}`] : [] });
  const swarm = new Child<SwarmRequest>("swarm", "bench/fixtures/agent-swarm.ts");
  const sessions = new Child<LoadSessionsRequest>("sessions", "bench/fixtures/load-sessions.ts");
  const rooms = new Child<LoadRequest>("rooms", "bench/fixtures/room-load.ts");
  const pg = pgUrl ? postgres(pgUrl, { max: 1, onnotice: () => {} }) : null;
  const results: StepResult[] = [];
  try {
    await Promise.all([swarm.ready, sessions.ready, rooms.ready]);
    let t = performance.now();
    // The swarm holds identities M..N (its agent i is identity M + i); the sessions process reads 0..M.
    const swarmFile = file.replace(/\.json$/, ".swarm.json");
    writeFileSync(swarmFile, JSON.stringify((JSON.parse(readFileSync(file, "utf8")) as unknown[]).slice(M)));
    await swarm.call({ t: "load", file: swarmFile });
    await swarm.call({ t: "url", url });
    console.log(`\n${label}: server pid ${proc.pid}, load average ${loadavg()}; ${fmt(N - M)} swarm agents loaded in ${fmt((performance.now() - t) / 1000, 1)} s`);
    const admin = (await benchApi(url, "POST", "/api/auth/login", null, { username: "admin", password: BENCH_PASSWORD })).token as string;
    const password = "bench-technician-password";
    await benchApi(url, "POST", "/api/users", admin, { username: "bench-tech", role: "technician", password });
    const tech = (await benchApi(url, "POST", "/api/auth/login", null, { username: "bench-tech", password })).token as string;
    const roomIds: string[] = [];
    let swarmUp = 0;
    let sessionsUp = 0;
    const online = async () => ((await benchApi(url, "GET", "/bench/online", null)) as { online: number }).online;

    for (const [scale, mult] of STEPS) {
      const nS = Math.round(N * scale), mS = Math.round(M * scale), rS = Math.round(R * scale);
      const need = STEP_MS + 30_000 + (nS - mS - swarmUp) * 5;
      if (left() < need) {
        console.log(`  step ${scale}×${mult}: skipped, ${fmt(left() / 1000)} s left of the deadline`);
        continue;
      }
      // Grow: agents in waves, then sessions, then rooms.
      t = performance.now();
      let retries = 0;
      while (swarmUp < nS - mS) {
        const to = Math.min(nS - mS, swarmUp + CONNECT_WAVE);
        const w = await swarm.call<WaveResult>({ t: "agents", from: swarmUp, to });
        retries += w.retries;
        swarmUp = to;
      }
      const agentsMs = performance.now() - t;
      t = performance.now();
      if (sessionsUp < mS) {
        await sessions.call({ t: "setup", url, password: BENCH_PASSWORD, file, from: sessionsUp, to: mS });
        sessionsUp = mS;
      }
      const sessionsMs = performance.now() - t;
      t = performance.now();
      while (roomIds.length < rS) {
        const id = (await benchApi(url, "POST", "/api/rooms", tech, { name: `load-${roomIds.length}` })).id as string;
        await rooms.call({ t: "subscribe", set: `room-${roomIds.length}`, url, path: `/ws/rooms/${id}`, token: tech, n: SUBS_PER_ROOM, waitLive: true });
        roomIds.push(id);
      }
      const roomsMs = performance.now() - t;
      const deadline = Date.now() + 60_000;
      let on = await online();
      while (on < nS && Date.now() < deadline) {
        await Bun.sleep(250);
        on = await online();
      }
      console.log(`  step ${scale}×${mult}: ${fmt(nS)} agents (${fmt(nS - mS)} swarm welcomed, +${fmt((agentsMs / 1000), 1)} s, ${retries} retries), ${fmt(on)} online; ${mS} sessions (+${fmt(sessionsMs / 1000, 1)} s); ${rS} rooms × ${SUBS_PER_ROOM} subscribers (+${fmt(roomsMs / 1000, 1)} s)`);
      await Bun.sleep(2_000);

      // Measure.
      const pgPids = pg ? (await pg`select pid from pg_stat_activity where datname = ${pgDb}`).map((r) => Number(r.pid)) : [];
      const pids: Record<string, number[]> = { server: [proc.pid], postgres: pgPids, swarm: [swarm.proc.pid], sessions: [sessions.proc.pid], rooms: [rooms.proc.pid], driver: [process.pid] };
      const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, ps]) => [k, ps.reduce((a, p) => a + cpuOf(p), 0)]));
      const machine0 = machineCpu();
      const wait0 = runDelay(proc.pid);
      await fetch(`${url}/bench/sample`); // resets
      await swarm.call({ t: "stats" });
      const hb0 = (await swarm.call<SwarmStats>({ t: "stats" })).heartbeats;
      const t0 = performance.now();
      const roomRate = ROOM_RATE * mult;
      const [sess, roomRuns, apiR] = await Promise.all([
        sessions.call<RunResult>({ t: "run", ms: STEP_MS, outputBps: OUTPUT_BPS * mult, typeMs: TYPE_MS }),
        Promise.all(roomIds.map((id, i) => {
          const post: PostTarget = { url, path: `/api/rooms/${id}/messages`, token: tech };
          return rooms.call<{ lat: number[]; posted: number; skipped: number; failed: number }>({ t: "latency", set: `room-${i}`, post, rate: roomRate, ms: STEP_MS, bare: false, posters: 2 });
        })),
        apiProbe(url, admin, STEP_MS),
      ]);
      const wall = (performance.now() - t0) / 1000;
      const cpu = Object.fromEntries(Object.entries(pids).map(([k, ps]) => [k, (ps.reduce((a, p) => a + cpuOf(p), 0) - cpu0[k]!) / wall]));
      cpu.machine = (machineCpu() - machine0) / wall;
      cpu.serverWait = (runDelay(proc.pid) - wait0) / wall;
      const rss = Object.fromEntries(Object.entries(pids).filter(([k]) => k !== "postgres").map(([k, ps]) => [k, rssMb(ps[0]!)]));
      const sample = (await (await fetch(`${url}/bench/sample`)).json()) as Sample;
      const st = await swarm.call<SwarmStats>({ t: "stats" });
      const lat = roomRuns.flatMap((r) => r.lat).sort((a, b) => a - b);
      const posted = roomRuns.reduce((a, r) => a + r.posted, 0);
      const failed = roomRuns.reduce((a, r) => a + r.failed, 0);
      const offered = roomRuns.length * Math.round((STEP_MS / 1000) * roomRate);
      const r: StepResult = {
        scale, mult, agents: nS, online: await online(), sessions: mS, rooms: rS, wall,
        heartbeatsPerS: (st.heartbeats - hb0) / wall,
        sess, offeredOutputMiBs: (OUTPUT_BPS * mult * mS) / 1048576,
        rooms_: { offered, posted, accepted: posted - failed, skipped: roomRuns.reduce((a, x) => a + x.skipped, 0), failed, perS: (posted - failed) / (STEP_MS / 1000), p50: pct(lat, 50), p99: pct(lat, 99), deliveries: lat.length, expected: posted * SUBS_PER_ROOM },
        apiR, cpu, rss, sample, unexpected: st.unexpected,
      };
      results.push(r);
      print(r);
    }
    return results;
  } finally {
    await sessions.call({ t: "close" }).catch(() => {});
    await swarm.call({ t: "close", what: "agents" }).catch(() => {});
    for (const c of [swarm, sessions, rooms]) c.proc.kill("SIGKILL");
    await pg?.end();
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
    await proc.exited;
    clearTimeout(timer);
  }
}

function print(r: StepResult) {
  const s = r.sess;
  const mibs = (b: number) => fmt(b / 1048576 / s.seconds, 2);
  console.log(`    agents: ${fmt(r.agents)} (${fmt(r.online)} online), ${fmt(r.heartbeatsPerS)} heartbeats/s sent; closes ${JSON.stringify(r.unexpected)}`);
  console.log(`    sessions: ${s.sessions}, output offered ${fmt(r.offeredOutputMiBs, 2)} MiB/s, written ${mibs(s.sentBytes)} MiB/s, delivered ${mibs(s.receivedBytes)} MiB/s (${s.heldBack} frames held back); keystroke RTT p50 ${fmt(s.rttP50, 2)} / p99 ${fmt(s.rttP99, 2)} / max ${fmt(s.rttMax, 1)} ms (${fmt(s.keys)} keys); ${s.closed} closed`);
  const q = r.rooms_;
  console.log(`    rooms: ${r.rooms}, ${fmt(q.accepted)} of ${fmt(q.offered)} offered posts accepted = ${fmt(q.perS)}/s (${q.skipped} skipped: both connections busy; ${q.failed} failed); post → delivery p50 ${fmt(q.p50, 2)} / p99 ${fmt(q.p99, 2)} ms (${fmt(q.deliveries)} of ${fmt(q.expected)} deliveries)`);
  const a = r.apiR;
  console.log(`    API: GET /api/machines?q= p50 ${fmt(a.machines.p50, 1)} / p99 ${fmt(a.machines.p99, 1)} ms (${a.machines.n}); GET /api/sessions p50 ${fmt(a.sessions.p50, 1)} / p99 ${fmt(a.sessions.p99, 1)} ms (${a.sessions.n}); ${a.skipped} skipped, ${a.failed} failed`);
  const c = r.cpu;
  console.log(`    CPU (cores): server ${fmt(c.server!, 2)}, postgres backends ${fmt(c.postgres!, 2)}, swarm ${fmt(c.swarm!, 2)}, sessions ${fmt(c.sessions!, 2)}, rooms load ${fmt(c.rooms!, 2)}, driver ${fmt(c.driver!, 2)}; the server's JS thread waited for a CPU ${fmt(c.serverWait! * 1000)} ms/s; whole machine ${fmt(c.machine!, 2)} of 2 (load average ${loadavg()})`);
  console.log(`    RSS (MiB): server ${fmt(r.rss.server!)}, swarm ${fmt(r.rss.swarm!)}, sessions ${fmt(r.rss.sessions!)}, rooms load ${fmt(r.rss.rooms!)}, driver ${fmt(r.rss.driver!)}; server JS heap ${fmt(r.sample.heapBytes / 1048576)} MiB`);
  const d = r.sample.db;
  console.log(`    server event-loop lag p50 ${fmt(r.sample.lag.p50, 1)} / p99 ${fmt(r.sample.lag.p99, 1)} / max ${fmt(r.sample.lag.max, 0)} ms; DB: ${fmt(d.queries / r.wall)} statements/s (${fmt(d.queryMs / r.wall)} ms/s awaited), ${fmt(d.transactions / r.wall)} transactions/s (${fmt(d.transactionMs / r.wall)} ms/s)`);
  for (const x of d.top.slice(0, 5)) console.log(`      ${fmt(x.n / r.wall, 1).padStart(7)}/s ${fmt(x.ms / r.wall).padStart(5)} ms/s (max ${x.max} ms) ${x.sql}`);
}

function summary(label: string, rs: StepResult[]) {
  console.log(`\nSummary, ${label} (each step ${STEP_MS / 1000} s; output ${OUTPUT_BPS / 1024} KiB/s per session and ${ROOM_RATE} post/s per room at ×1)`);
  console.log("| step | agents (online) | hb/s | sessions: output delivered MiB/s (offered) | keystroke p50 / p99 ms | rooms: posts/s accepted (offered) | post→delivery p50 / p99 ms | API machines?q / sessions p50 / p99 ms | server CPU (run-queue wait ms/s) | postgres CPU | load CPU | machine CPU | server RSS MiB | lag p99 / max ms |");
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
  for (const r of rs) {
    const s = r.sess;
    const load = r.cpu.swarm! + r.cpu.sessions! + r.cpu.rooms! + r.cpu.driver!;
    console.log(`| ${fmt(r.agents)}/${r.sessions}/${r.rooms} ×${r.mult} | ${fmt(r.agents)} (${fmt(r.online)}) | ${fmt(r.heartbeatsPerS)} | ${fmt(s.receivedBytes / 1048576 / s.seconds, 2)} (${fmt(r.offeredOutputMiBs, 2)}) | ${fmt(s.rttP50, 2)} / ${fmt(s.rttP99, 1)} | ${fmt(r.rooms_.perS)} (${fmt(r.rooms_.offered / (STEP_MS / 1000))}) | ${fmt(r.rooms_.p50, 1)} / ${fmt(r.rooms_.p99, 1)} | ${fmt(r.apiR.machines.p50, 1)} / ${fmt(r.apiR.machines.p99, 1)}; ${fmt(r.apiR.sessions.p50, 1)} / ${fmt(r.apiR.sessions.p99, 1)} | ${fmt(r.cpu.server!, 2)} (${fmt(r.cpu.serverWait! * 1000)}) | ${fmt(r.cpu.postgres!, 2)} | ${fmt(load, 2)} | ${fmt(r.cpu.machine!, 2)} | ${fmt(r.rss.server!)} | ${fmt(r.sample.lag.p99, 0)} / ${fmt(r.sample.lag.max, 0)} |`);
  }
}

// ---- main -------------------------------------------------------------------------------------

const cpuName = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.+)/)?.[1] ?? "unknown CPU";
console.log(`bun ${Bun.version}, ${navigator.hardwareConcurrency} cores, ${cpuName}${QUICK ? " (quick)" : ""}; N=${fmt(N)} agents, M=${M} sessions, R=${R} rooms; steps ${STEPS.map(([s, m]) => `${s}×${m}`).join(", ")}`);
const limit = Number(readFileSync("/proc/self/limits", "utf8").match(/Max open files\s+(\d+)/)?.[1] ?? 0);
if (limit && limit < N + M * 2 + R * (SUBS_PER_ROOM + 2) + 500) throw new Error(`open files limit ${limit} is too low: raise it (ulimit -n 65536)`);
const hard = setTimeout(() => {
  console.error("bench/load.ts: over the deadline by a minute; giving up");
  process.exit(2);
}, DEADLINE_MS + 60_000);
const dataDir = mkdtempSync(join(tmpdir(), "tether-bench-load-"));
try {
  let t = performance.now();
  const { swarm: ids, machines } = identities(N);
  const file = join(dataDir, "agents.json");
  writeFileSync(file, JSON.stringify(ids));
  console.log(`${fmt(N)} identities made in ${fmt((performance.now() - t) / 1000, 1)} s`);
  const pgUrl = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
  if (pgUrl && process.env.BENCH_ONLY !== "pglite") {
    await withBenchSchema(pgUrl, "bench_load", async (db) => {
      t = performance.now();
      await seed(db.config, machines);
      console.log(`PostgreSQL seeded in ${fmt((performance.now() - t) / 1000, 1)} s`);
      const rs = await run("PostgreSQL", db.env, file, "bench_load", pgUrl);
      summary("PostgreSQL", rs);
    });
  } else {
    const pgData = join(dataDir, "pglite");
    t = performance.now();
    await seed({ dataDir: pgData }, machines);
    console.log(`PGlite seeded in ${fmt((performance.now() - t) / 1000, 1)} s`);
    const rs = await run("PGlite", { TETHER_DATA_DIR: pgData, DATABASE_URL: "" }, file, null, null);
    summary("PGlite", rs);
  }
} finally {
  clearTimeout(hard);
  rmSync(dataDir, { recursive: true, force: true });
}
