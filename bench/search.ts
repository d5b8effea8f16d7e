/**
 * Machine search latency (M5): `bun bench/search.ts`.
 *
 * 10,000 machines with varied inventory are inserted directly by SQL, then a real server
 * process serves GET /api/machines over loopback. This process sends a bounded number of
 * sequential requests per query (free text, scoped, multi-term, and no q at all: the
 * baseline) and prints p50 and p99 latency. Goal: p99 <= 50 ms with q.
 *
 * Runs on the embedded database; set BENCH_DATABASE_URL (or TEST_DATABASE_URL) to also run on
 * PostgreSQL.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { applySchema } from "../src/store/schema.ts";
import { openStore, type StoreConfig } from "../src/store/store.ts";
import { BENCH_PASSWORD, startBenchServer } from "./fixtures/server-process.ts";

const MACHINES = 10_000;
const SITES = 20;
const WARMUP = 20;
const REQUESTS = 200;
const GOAL_P99_MS = 50;

const QUERIES: Array<[string, Record<string, string>]> = [
  ["baseline: no q (enrollment order)", {}],
  ["baseline: no q, sort=hostname", { sort: "hostname" }],
  ["free text: srv-004", { q: "srv-004" }],
  ["free text: user1234 (rare)", { q: "user1234" }],
  ["free text phrase: \"windows 11\"", { q: '"windows 11"' }],
  ["scoped: os:ubuntu", { q: "os:ubuntu" }],
  ["scoped: ip:10.0.3.", { q: "ip:10.0.3." }],
  ["scoped: user:alice", { q: "user:alice" }],
  ["multi: ubuntu tag:prod status:online", { q: "ubuntu tag:prod status:online" }],
  ["multi + sort: debian berlin, last_seen desc", { q: "debian berlin", sort: "last_seen", order: "desc" }],
];

/** Sites and 10,000 machines, in a few statements of generated rows (no user input: constants only). */
async function seed(config: StoreConfig) {
  const store = await openStore(config);
  try {
    await applySchema(store);
    await store.query(
      `insert into sites (id, tenant_id, site_code, display_name, company)
       select gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'SITE' || i, 'Office ' || (array['Berlin','Paris','Austin','Osaka','Lima'])[i % 5 + 1] || ' ' || i, 'Company ' || (i % 4)
         from generate_series(1, $1::int) as i`, [SITES]);
    await store.query(
      `insert into machines (id, tenant_id, site_id, machine_uid, hostname, labels, public_key, status, last_seen_at, inventory, external_ip, agent_version, created_at)
       select gen_random_uuid(), '00000000-0000-0000-0000-000000000001',
              (select id from sites order by site_code offset (i % $2::int) limit 1),
              'bench-uid-' || i,
              (array['WS','SRV','LT','KIOSK'])[i % 4 + 1] || '-' || lpad(i::text, 5, '0'),
              jsonb_build_object('company', 'Company ' || (i % 4), 'site', 'Office ' || (i % 20), 'department', (array['IT','Sales','Finance','Ops','HR'])[i % 5 + 1],
                                 'device_type', (array['desktop','server','laptop'])[i % 3 + 1], 'tags', jsonb_build_array((array['prod','dev','lab'])[i % 3 + 1], 'ring' || (i % 7))),
              'bench-key',
              case when i % 3 = 0 then 'online' else 'offline' end,
              case when i % 11 = 0 then null else now() - (i || ' minutes')::interval end,
              jsonb_build_object(
                'os', jsonb_build_object('name', (array['Windows 11 Pro','Ubuntu','macOS','Debian','Windows Server 2022'])[i % 5 + 1], 'version', (array['23H2','22.04','14.4','12','21H2'])[i % 5 + 1]),
                'kernel', (array['10.0.22631','6.5.0-generic','23.4.0','6.1.0-18-amd64','10.0.20348'])[i % 5 + 1],
                'cpu', jsonb_build_object('model', (array['Intel Core i7-1185G7','AMD EPYC 7302','Apple M2','Intel Xeon E-2236'])[i % 4 + 1], 'cores', 4 + i % 12),
                'memory_bytes', (8 + i % 56) * 1073741824::bigint,
                'hostname', 'host-' || i,
                'users', jsonb_build_array('user' || i, (array['alice','bob','carol','dave','erin','frank','grace'])[i % 7 + 1]),
                'private_ips', jsonb_build_array('10.' || (i / 65536 % 256) || '.' || (i / 256 % 256) || '.' || (i % 256)),
                'macs', jsonb_build_array(lpad(to_hex(i % 256), 2, '0') || ':' || lpad(to_hex(i / 256 % 256), 2, '0') || ':5e:00:53:af'),
                'uptime_s', i * 37,
                'timezone', (array['Europe/Berlin','America/New_York','Asia/Tokyo','UTC'])[i % 4 + 1],
                'agent_version', '1.' || (i % 3) || '.0',
                'elevated', i % 2 = 0),
              '203.0.' || (i % 256) || '.' || (i / 256 % 256),
              '1.' || (i % 3) || '.0',
              now() - (($1::int - i) || ' seconds')::interval
         from generate_series(1, $1::int) as i`, [MACHINES, SITES]);
    await store.query("analyze machines");
  } finally {
    await store.close();
  }
}


const pct = (sorted: number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;

async function run(label: string, config: StoreConfig, env: Record<string, string>) {
  const t0 = performance.now();
  await seed(config);
  console.log(`\n${label}: ${MACHINES} machines in ${SITES} sites seeded in ${((performance.now() - t0) / 1000).toFixed(1)} s; ${REQUESTS} sequential requests per query, limit 50`);
  const { proc, url } = await startBenchServer(env);
  try {
    const login = await fetch(`${url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "admin", password: BENCH_PASSWORD }) });
    if (!login.ok) throw new Error(`login: ${login.status} ${await login.text()}`);
    const token = ((await login.json()) as { token: string }).token;
    const headers = { authorization: `Bearer ${token}` };
    console.log(`  ${"query".padEnd(46)} ${"rows".padStart(5)} ${"p50 ms".padStart(8)} ${"p99 ms".padStart(8)}`);
    for (const [name, params] of QUERIES) {
      const target = `${url}/api/machines?${new URLSearchParams({ limit: "50", ...params })}`;
      let rows = 0;
      const times: number[] = [];
      for (let i = 0; i < WARMUP + REQUESTS; i++) {
        const started = performance.now();
        const res = await fetch(target, { headers });
        const body = (await res.json()) as { machines?: unknown[] };
        const ms = performance.now() - started;
        if (!res.ok) throw new Error(`${name}: ${res.status} ${JSON.stringify(body)}`);
        rows = body.machines!.length;
        if (i >= WARMUP) times.push(ms);
      }
      times.sort((a, b) => a - b);
      const p99 = pct(times, 99);
      const goal = params.q ? (p99 <= GOAL_P99_MS ? "  goal met" : "  goal NOT met") : "";
      console.log(`  ${name.padEnd(46)} ${String(rows).padStart(5)} ${pct(times, 50).toFixed(2).padStart(8)} ${p99.toFixed(2).padStart(8)}${goal}`);
    }
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
  }
}

console.log(`bun ${Bun.version}, ${navigator.hardwareConcurrency} cores`);
const dataDir = mkdtempSync(join(tmpdir(), "tether-bench-search-"));
try {
  await run("PGlite", { dataDir }, { TETHER_DATA_DIR: dataDir, DATABASE_URL: "" });
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
const pgUrl = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
if (pgUrl) {
  const schema = `bench_search_${crypto.randomUUID().slice(0, 8)}`;
  const admin = postgres(pgUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create schema ${schema}`);
  try {
    const url = new URL(pgUrl);
    url.searchParams.set("search_path", schema);
    await run("PostgreSQL", { dataDir: "", databaseUrl: pgUrl, searchPath: schema }, { DATABASE_URL: url.toString() });
  } finally {
    await admin.unsafe(`drop schema ${schema} cascade`);
    await admin.end();
  }
} else {
  console.log("\nPostgreSQL: skipped (set BENCH_DATABASE_URL)");
}
