/**
 * Agents at scale (issue 4, requirement 8): `bun bench/agents.ts`.
 *
 * 5,000 machines with agent keys are inserted by SQL; the connect path is the real one. A real
 * server process (bench/fixtures/auth-server.ts) serves /ws/agent on loopback, and a second
 * process (bench/fixtures/agent-swarm.ts) runs the simulated agents: real WebSocket clients
 * doing the real handshake as the bundled agent does (hello in the upgrade's headers,
 * challenge, Ed25519 proof with the inventory, welcome), then heartbeats. This process only orchestrates and reads the server's RSS.
 *
 * Both server processes run with the allocator settings of `npm start` (src/allocator.ts).
 *
 * (a) Resident memory per connected idle agent: the server's VmRSS after a full GC (and after
 *     the allocator's purge delay, so that freed memory is not counted) with 1,000
 *     and 5,000 agents connected (1,000 at once, then 4,000 at once), handshaken and idle
 *     (heartbeats flowing), minus the same with none, divided by the count. Goal <= 20 KB at
 *     5,000. Baseline: the same figure for plain WebSockets that do no handshake (a fresh
 *     server, /bench/ws).
 * (b) Reconnect storm: 5,000 agents, all offline, connect at once; timed until every one has
 *     its welcome and the server counts 5,000 machines online. Baseline in the same run, on
 *     the same server: 5,000 plain WebSocket connects (to /bench/ws), timed until every one
 *     is open. Goal: ratio <= 3. Best of STORM_REPS agent storms and STORM_REPS + 1 plain
 *     waves, interleaved, each started once the server is quiet.
 * (c) GET /api/machines?q= latency over 10,000 machines is bench/search.ts.
 *
 * Runs on the embedded database; set BENCH_DATABASE_URL (or TEST_DATABASE_URL) to also run on
 * PostgreSQL. BENCH_AGENTS changes the agent count (default 5,000) for a quick try, and
 * BENCH_STORMS the number of agent storms (default 2);
 * BENCH_ONLY=pglite or BENCH_ONLY=postgres runs one database only; BENCH_PROFILE=1 prints the
 * server's statements (count, total and longest time) after each agent storm;
 * BENCH_CPU_PROF=<dir> writes CPU profiles of the storms' server (bun --cpu-prof and
 * --cpu-prof-md) and of the agents' process, and prints, for each agent storm, their hottest
 * functions by samples (bench/fixtures/profile-window.ts: the Markdown profile's times are
 * mostly idle time).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import postgres from "postgres";
import { withAllocatorEnv } from "../src/allocator.ts";
import { hottest } from "./fixtures/profile-window.ts";
import { identities, seed } from "./fixtures/agent-keys.ts";
import type { SwarmRequest, SwarmStats, WaveResult } from "./fixtures/agent-swarm.ts";
import { Child, type DistOmit } from "./fixtures/ipc-child.ts";
import { startBenchServer } from "./fixtures/server-process.ts";

const N = Number(process.env.BENCH_AGENTS ?? 5_000);
const STEP = Math.round(N / 5);
const WARMUP = 100;
const HEARTBEAT_MS = 5_000;
const OFFLINE_AFTER_MS = 15_000;
/** Longer than a heartbeat interval, so every agent has sent one since it connected. */
const SETTLE_MS = 6_000;
const RSS_SAMPLES = 3;
/** BENCH_STORMS: more storms (and plain waves) per run, for comparing two versions of the code. */
const STORM_REPS = Number(process.env.BENCH_STORMS ?? 2);
const GOAL_KB = 20;
const GOAL_STORM_RATIO = 3;
const ROOT = resolve(import.meta.dir, "..");
const CPU_PROF = process.env.BENCH_CPU_PROF;

/** The agents' process, driven one request at a time over IPC. */
type Swarm = Child<SwarmRequest>;
const newSwarm = (): Swarm => new Child<SwarmRequest>("swarm", "bench/fixtures/agent-swarm.ts", CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${CPU_PROF}`] : []);
/** Every run's agent storms, [from, to] in epoch ms, for the agents' process's profile. */
const swarmStormWindows: Array<[string, Array<[number, number]>]> = [];

const rssKb = (pid: number) => Number(readFileSync(`/proc/${pid}/status`, "utf8").match(/VmRSS:\s+(\d+) kB/)![1]);
/** utime + stime in seconds (clock ticks of 1/100 s) from a /proc/<pid>/stat line. */
const statCpuSeconds = (stat: string) => {
  const fields = stat.split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
};
const cpuSeconds = (pid: number) => statCpuSeconds(readFileSync(`/proc/${pid}/stat`, "utf8"));
/**
 * CPU seconds the whole machine spent busy (every process, the database's and other jobs' too;
 * /proc/stat, 1/100 s ticks), and of that, interrupts (loopback's packets are softirq work) and
 * time the hypervisor took.
 */
const machineSeconds = () => {
  const f = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f as [number, number, number, number, number, number, number, number];
  return { busy: (user + nice + system + irq + softirq + steal) / 100, irq: (irq + softirq) / 100, steal: steal / 100 };
};
/** CPU seconds of every process named postgres (the server's backends and its own workers), exited ones aside. */
const postgresCpuSeconds = () => {
  let sum = 0;
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
      if (stat.includes("(postgres)")) sum += statCpuSeconds(stat);
    } catch {} // gone meanwhile
  }
  return sum;
};
/**
 * Connections the kernel turned away since boot because a listen queue was full (all sockets;
 * a wave is 5,000 connects, Bun's own queue 512 long, the server's 4096: src/http/listen-backlog.ts).
 * Each costs its client a SYN retransmit (1 s, then 3 s), so it says whether a wave's tail was
 * the server's work or the queue.
 */
const listenOverflows = () => {
  const lines = readFileSync("/proc/net/netstat", "utf8").split("\n").filter((l) => l.startsWith("TcpExt:"));
  const at = lines[0]!.split(" ").indexOf("ListenOverflows");
  return at > 0 ? Number(lines[1]!.split(" ")[at]) : 0;
};
/** CPU seconds of a process per kind of thread ("bun" is the main thread, "Worker" a worker thread, the rest JSC's GC and JIT). */
function threadCpu(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8");
      const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")")).replace(/\s*\d+$/, "");
      const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
      out.set(name, (out.get(name) ?? 0) + (Number(fields[11]) + Number(fields[12])) / 100);
    } catch {} // a thread that ended meanwhile
  }
  return out;
}
const threadCpuSince = (pid: number, before: Map<string, number>) =>
  [...threadCpu(pid)].map(([k, v]) => [k, v - (before.get(k) ?? 0)] as const).filter(([, v]) => v >= 0.05).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(", ");
/** Waits until the server has used under 10% of a core over half a second (backlogged writes done), at most 30 s. */
async function quiet(pid: number) {
  const deadline = Date.now() + 30_000;
  let last = cpuSeconds(pid);
  while (Date.now() < deadline) {
    await Bun.sleep(500);
    const now = cpuSeconds(pid);
    if (now - last < 0.05) return;
    last = now;
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

interface Memory {
  rssKb: number;
  samples: number[];
  heapBytes: number;
  heapCapacity: number;
  extraBytes: number;
  types: Record<string, number>;
}

/**
 * Full GC in the server, then VmRSS once the allocator has given freed pages back (it keeps them
 * MIMALLOC_PURGE_DELAY ms, src/allocator.ts), then twice more a second apart; the median.
 */
async function memory(url: string, pid: number): Promise<Memory> {
  const samples: number[] = [];
  let heap = { heap_size: 0, heap_capacity: 0, extra_memory: 0, types: {} as Record<string, number> };
  for (let k = 0; k < RSS_SAMPLES; k++) {
    heap = (await (await fetch(`${url}/bench/gc`, { method: "POST" })).json()) as typeof heap;
    await Bun.sleep(k === 0 ? Math.max(0, Number(withAllocatorEnv().MIMALLOC_PURGE_DELAY)) + 2_000 : 1_000);
    samples.push(rssKb(pid));
  }
  return { rssKb: median(samples), samples, heapBytes: heap.heap_size, heapCapacity: heap.heap_capacity, extraBytes: heap.extra_memory, types: heap.types };
}

async function online(url: string): Promise<number> {
  return ((await (await fetch(`${url}/bench/online`)).json()) as { online: number }).online;
}

async function waitOffline(url: string) {
  const deadline = Date.now() + 120_000;
  while ((await online(url)) > 0) {
    if (Date.now() > deadline) throw new Error("machines still online 120 s after their agents closed");
    await Bun.sleep(50);
  }
}

const kb = (bytes: number) => (bytes / 1024).toFixed(1);
const perKb = (a: Memory, b: Memory, n: number) => (b.rssKb - a.rssKb) / n;
const fmt = (n: number) => n.toLocaleString("en-US");
const secs = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

function heapGrowth(before: Memory, after: Memory, n: number) {
  const rows = Object.entries(after.types)
    .map(([type, count]) => [type, (count - (before.types[type] ?? 0)) / n] as const)
    .filter(([, d]) => d >= 0.5)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 12);
  return rows.map(([t, d]) => `${t} ${d.toFixed(1)}`).join(", ");
}

async function stop(proc: ReturnType<typeof Bun.spawn>) {
  proc.kill("SIGTERM");
  const t = setTimeout(() => proc.kill("SIGKILL"), 30_000);
  await proc.exited;
  clearTimeout(t);
}

async function run(label: string, swarm: Swarm, env: Record<string, string>) {
  const serverEnv = { ...env, TETHER_HEARTBEAT_MS: String(HEARTBEAT_MS), TETHER_OFFLINE_AFTER_MS: String(OFFLINE_AFTER_MS), ...(process.env.BENCH_PROFILE ? { TETHER_PGLITE_PROFILE: "1" } : {}) };
  console.log(`\n${label}: ${fmt(N)} agents, heartbeat ${HEARTBEAT_MS / 1000} s, offline after ${OFFLINE_AFTER_MS / 1000} s`);

  // Baseline for (a): plain sockets on a fresh server.
  let { proc, url } = await startBenchServer(serverEnv);
  let plainMem: { m0: Memory; m1: Memory; mN: Memory };
  try {
    await swarm.call({ t: "url", url });
    await swarm.call({ t: "plain", n: WARMUP });
    await swarm.call({ t: "close", what: "plain" });
    await Bun.sleep(SETTLE_MS);
    const m0 = await memory(url, proc.pid);
    await swarm.call({ t: "plain", n: STEP });
    await Bun.sleep(SETTLE_MS);
    const m1 = await memory(url, proc.pid);
    await swarm.call({ t: "plain", n: N - STEP });
    await Bun.sleep(SETTLE_MS);
    const mN = await memory(url, proc.pid);
    await swarm.call({ t: "close", what: "plain" });
    plainMem = { m0, m1, mN };
    console.log(`  plain WebSockets: RSS ${fmt(m0.rssKb)} kB idle, ${fmt(m1.rssKb)} kB with ${fmt(STEP)}, ${fmt(mN.rssKb)} kB with ${fmt(N)} (samples ${mN.samples.join("/")})`);
    console.log(`    per socket: ${perKb(m0, m1, STEP).toFixed(1)} KB at ${fmt(STEP)}, ${perKb(m0, mN, N).toFixed(1)} KB at ${fmt(N)}; JS heap ${kb((mN.heapBytes - m0.heapBytes) / N)} KB live, ${kb((mN.heapCapacity - m0.heapCapacity) / N)} KB capacity`);
    console.log(`    heap objects per socket: ${heapGrowth(m0, mN, N)}`);
  } finally {
    await stop(proc);
  }

  // (a) and (b) on another fresh server.
  /** Agent storms' [from, to] in epoch ms, for the CPU profile. */
  const stormWindows: Array<[number, number]> = [];
  ({ proc, url } = await startBenchServer(serverEnv, CPU_PROF ? { args: ["--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${CPU_PROF}`] } : {}));
  try {
    await swarm.call({ t: "url", url });
    await swarm.call({ t: "stats" }); // resets the count of unexpected closes
    // Warm-up on machines of their own, so the measured agents' actors are all new.
    await swarm.call({ t: "agents", from: N, to: N + WARMUP, waitOnline: WARMUP });
    await swarm.call({ t: "close", what: "agents" });
    await waitOffline(url);
    await Bun.sleep(SETTLE_MS);
    const a0 = await memory(url, proc.pid);
    if (process.env.BENCH_PROFILE) await fetch(`${url}/bench/profile`);
    const first = await swarm.call<WaveResult>({ t: "agents", from: 0, to: STEP, waitOnline: STEP });
    await Bun.sleep(SETTLE_MS);
    const a1 = await memory(url, proc.pid);
    const rest = await swarm.call<WaveResult>({ t: "agents", from: STEP, to: N, waitOnline: N });
    await swarm.call({ t: "stats" }); // from here on, any close is unexpected
    const cpu0 = cpuSeconds(proc.pid);
    const t0 = performance.now();
    await Bun.sleep(SETTLE_MS);
    const idleCpu = (cpuSeconds(proc.pid) - cpu0) / ((performance.now() - t0) / 1000);
    const aN = await memory(url, proc.pid);
    const stats = await swarm.call<SwarmStats>({ t: "stats" });
    const retries = (w: WaveResult) => (w.retries ? ` (${w.retries} retries ${JSON.stringify(w.retryCodes)})` : "");
    console.log(`  agents: ${fmt(STEP)} connected in ${secs(first.onlineMs!)}${retries(first)}, ${fmt(N - STEP)} more in ${secs(rest.onlineMs!)}${retries(rest)}; ${fmt(stats.live)} live, ${fmt(stats.heartbeats)} heartbeats sent, closes while idle ${JSON.stringify(stats.unexpected)}`);
    console.log(`    RSS ${fmt(a0.rssKb)} kB idle, ${fmt(a1.rssKb)} kB with ${fmt(STEP)}, ${fmt(aN.rssKb)} kB with ${fmt(N)} (samples ${aN.samples.join("/")})`);
    console.log(`    per agent: ${perKb(a0, a1, STEP).toFixed(1)} KB at ${fmt(STEP)}, ${perKb(a0, aN, N).toFixed(1)} KB at ${fmt(N)}, ${perKb(a1, aN, N - STEP).toFixed(1)} KB marginal; JS heap ${kb((aN.heapBytes - a0.heapBytes) / N)} KB live, ${kb((aN.heapCapacity - a0.heapCapacity) / N)} KB capacity, extra memory ${kb((aN.extraBytes - a0.extraBytes) / N)} KB`);
    console.log(`    heap objects per agent: ${heapGrowth(a0, aN, N)}`);
    console.log(`    server CPU while ${fmt(N)} agents idle: ${(idleCpu * 100).toFixed(1)}% of a core`);
    if (stats.live !== N || Object.keys(stats.unexpected).length > 0) console.log("    WARNING: not every agent stayed connected while idle");

    await swarm.call({ t: "close", what: "agents" });
    await waitOffline(url);
    const plainStorms: WaveResult[] = [];
    const agentStorms: WaveResult[] = [];
    /** A wave, with the CPU seconds the server and the agents' process spent during it. */
    const timed = async (req: DistOmit<SwarmRequest, "id">) => {
      await quiet(proc.pid);
      const [s0, c0, t0, m0, pg0, o0, w0, from] = [cpuSeconds(proc.pid), cpuSeconds(swarm.proc.pid), threadCpu(proc.pid), machineSeconds(), postgresCpuSeconds(), listenOverflows(), performance.now(), Date.now()];
      const result = await swarm.call<WaveResult>(req);
      if (req.t === "agents") stormWindows.push([from, Date.now()]);
      const wall = (performance.now() - w0) / 1000;
      const m1 = machineSeconds();
      return { ...result, serverCpu: cpuSeconds(proc.pid) - s0, agentsCpu: cpuSeconds(swarm.proc.pid) - c0, threads: threadCpuSince(proc.pid, t0), machineCpu: m1.busy - m0.busy, irq: m1.irq - m0.irq, steal: m1.steal - m0.steal, postgres: postgresCpuSeconds() - pg0, overflows: listenOverflows() - o0, wall };
    };
    // The machine's busy time says whether a wave was bound by the CPU of the whole machine
    // (server, database, the agents' process and anything else), not by a wait somewhere.
    const retriesOf = (w: WaveResult) => (w.retries > 0 ? `, ${w.retries} retries ${JSON.stringify(w.retryCodes)}` : "");
    const cpuOf = (w: { serverCpu: number; agentsCpu: number; threads: string; machineCpu: number; irq: number; steal: number; postgres: number; overflows: number; wall: number }) =>
      `listen queue overflows ${w.overflows}; CPU: server ${w.serverCpu.toFixed(2)} s [${w.threads}], agents ${w.agentsCpu.toFixed(2)} s, postgres ${w.postgres.toFixed(2)} s; machine ${w.machineCpu.toFixed(2)} s busy (interrupts ${w.irq.toFixed(2)}, stolen ${w.steal.toFixed(2)}) in ${w.wall.toFixed(2)} s, ${Math.round((100 * w.machineCpu) / (w.wall * navigator.hardwareConcurrency))}% of its ${navigator.hardwareConcurrency} cores`;
    for (let rep = 0; rep < STORM_REPS; rep++) {
      const p = await timed({ t: "plain", n: N });
      plainStorms.push(p);
      await swarm.call({ t: "close", what: "plain" });
      const a = await timed({ t: "agents", from: 0, to: N, waitOnline: N });
      agentStorms.push(a);
      if (process.env.BENCH_PROFILE) {
        for (const q of (await (await fetch(`${url}/bench/profile`)).json()) as Array<{ sql: string; n: number; ms: number; max: number; own: number | null }>) {
          const own = q.own === null ? "" : `, ${String(q.own).padStart(5)} ms on PGlite's thread`;
          if (q.ms >= 20) console.log(`    sql ${String(q.n).padStart(6)}× ${String(q.ms).padStart(6)} ms waited (max ${q.max}${own}) ${q.sql}`);
        }
      }
      await swarm.call({ t: "close", what: "agents" });
      await waitOffline(url);
      console.log(`  storm ${rep + 1}: plain connects all open ${secs(p.allMs)} (p50 ${secs(p.p50Ms)}${retriesOf(p)}; ${cpuOf(p)})`);
      console.log(`           agents welcomed ${secs(a.allMs)} (p50 ${secs(a.p50Ms)}, p99 ${secs(a.p99Ms)}), all online ${secs(a.onlineMs!)}, ${a.retries} retries ${JSON.stringify(a.retryCodes)} (${cpuOf(a)})`);
    }
    // One more plain wave: the baseline's tail depends on SYN retransmits (listen backlog 512), so it gets the extra sample.
    const p = await timed({ t: "plain", n: N });
    plainStorms.push(p);
    await swarm.call({ t: "close", what: "plain" });
    console.log(`  plain connects once more: all open ${secs(p.allMs)} (p50 ${secs(p.p50Ms)}${retriesOf(p)}; ${cpuOf(p)})`);
    const plainBest = Math.min(...plainStorms.map((s) => s.allMs));
    const agentBest = Math.min(...agentStorms.map((s) => s.onlineMs!));
    return { label, plainMem, a0, a1, aN, idleCpu, plainBest, agentBest };
  } finally {
    await stop(proc);
    if (CPU_PROF) {
      printStormProfiles(CPU_PROF, proc.pid, stormWindows, "server, main thread");
      swarmStormWindows.push([label, stormWindows]);
    }
  }
}

/** Each agent storm's hottest functions, from the server's CPU profile (BENCH_CPU_PROF). */
function printStormProfiles(dir: string, pid: number, stormWindows: Array<[number, number]>, what: string) {
  const file = readdirSync(dir).find((f) => f.includes(`.${pid}.`) && f.endsWith(".cpuprofile"));
  if (!file) return console.log(`    no CPU profile of process ${pid} in ${dir}`);
  const profile = JSON.parse(readFileSync(join(dir, file), "utf8"));
  for (const [i, [from, to]] of stormWindows.entries()) {
    const r = hottest(profile, from, to, 30);
    console.log(`  storm ${i + 1}, ${what}, ${r.samples} samples (${join(dir, file)}):`);
    for (const row of r.self) console.log(`    self ${row.pct.toFixed(1).padStart(5)}%  ${row.fn}`);
    for (const row of r.total) console.log(`    total ${row.pct.toFixed(1).padStart(5)}%  ${row.fn}`);
  }
}

function summary(r: Awaited<ReturnType<typeof run>>) {
  const { plainMem: p, a0, a1, aN } = r;
  const at5 = perKb(a0, aN, N);
  const ratio = r.agentBest / r.plainBest;
  const rows = [
    ["(a) RSS per idle agent, " + fmt(N) + " connected", `${at5.toFixed(1)} KB`, `${perKb(p.m0, p.mN, N).toFixed(1)} KB per plain WebSocket`, `≤ ${GOAL_KB} KB`, at5 <= GOAL_KB ? "yes" : "NO"],
    ["(a) RSS per idle agent, " + fmt(STEP) + " connected", `${perKb(a0, a1, STEP).toFixed(1)} KB`, `${perKb(p.m0, p.m1, STEP).toFixed(1)} KB per plain WebSocket`, "(linearity)", "–"],
    ["(b) reconnect storm, " + fmt(N) + " agents, until all online", secs(r.agentBest), `${secs(r.plainBest)} for ${fmt(N)} plain connects; ratio ${ratio.toFixed(1)}`, `ratio ≤ ${GOAL_STORM_RATIO}`, ratio <= GOAL_STORM_RATIO ? "yes" : "NO"],
    ["(c) GET /api/machines?q= over 10,000 machines", "bun bench/search.ts", "", "p99 ≤ 50 ms", "–"],
  ];
  console.log(`\nSummary, ${r.label} (best of ${STORM_REPS} agent storms and ${STORM_REPS + 1} plain ones; RSS after a full GC, median of ${RSS_SAMPLES})`);
  const w = [0, 1, 2, 3].map((c) => Math.max(...rows.map((row) => row[c]!.length)));
  for (const row of rows) console.log(`  ${row.map((cell, c) => (c < 4 ? cell.padEnd(w[c]!) : cell)).join("  ")}`);
}

const cpu = readFileSync("/proc/cpuinfo", "utf8").match(/model name\s*:\s*(.+)/)?.[1] ?? "unknown CPU";
console.log(`bun ${Bun.version}, ${navigator.hardwareConcurrency} cores, ${cpu}`);
const limit = Number(readFileSync("/proc/self/limits", "utf8").match(/Max open files\s+(\d+)/)?.[1] ?? 0);
if (limit && limit < N + WARMUP + 500) throw new Error(`open files limit ${limit} is too low for ${N} sockets: raise it (ulimit -n 65536)`);

const dataDir = mkdtempSync(join(tmpdir(), "tether-bench-agents-"));
const swarm = newSwarm();
const results: Array<Awaited<ReturnType<typeof run>>> = [];
try {
  let t = performance.now();
  const { swarm: ids, machines } = identities(N + WARMUP);
  const file = join(dataDir, "agents.json");
  writeFileSync(file, JSON.stringify(ids));
  await swarm.ready;
  await swarm.call({ t: "load", file });
  console.log(`${fmt(N + WARMUP)} identities made and loaded in ${secs(performance.now() - t)}`);
  const only = process.env.BENCH_ONLY;
  if (only !== "postgres") {
    const pgData = join(dataDir, "pglite");
    t = performance.now();
    await seed({ dataDir: pgData }, machines);
    console.log(`PGlite seeded in ${secs(performance.now() - t)}`);
    results.push(await run("PGlite", swarm, { TETHER_DATA_DIR: pgData, DATABASE_URL: "" }));
  }

  const pgUrl = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
  if (pgUrl && only !== "pglite") {
    const schema = `bench_agents_${crypto.randomUUID().slice(0, 8)}`;
    const admin = postgres(pgUrl, { max: 1, onnotice: () => {} });
    await admin.unsafe(`create schema ${schema}`);
    try {
      const url = new URL(pgUrl);
      url.searchParams.set("search_path", schema);
      await seed({ dataDir: "", databaseUrl: pgUrl, searchPath: schema }, machines);
      results.push(await run("PostgreSQL", swarm, { DATABASE_URL: url.toString() }));
    } finally {
      await admin.unsafe(`drop schema ${schema} cascade`);
      await admin.end();
    }
  } else {
    console.log("\nPostgreSQL: skipped (set BENCH_DATABASE_URL)");
  }
  if (CPU_PROF) {
    // Bun writes the profile when the process exits by itself, not when it is killed.
    await swarm.call({ t: "exit" }).catch(() => {});
    await swarm.proc.exited;
    for (const [label, windows] of swarmStormWindows) {
      console.log(`\n${label}, the agents' process:`);
      printStormProfiles(CPU_PROF, swarm.proc.pid, windows, "agents' process");
    }
  }
  for (const r of results) summary(r);
} finally {
  swarm.proc.kill("SIGKILL");
  await swarm.proc.exited;
  rmSync(dataDir, { recursive: true, force: true });
}
