/**
 * What authentication costs a read: `bun bench/auth.ts`.
 *
 * A real server process serves GET /api/machines (a session token, then an API token, each
 * verified and checked for machines:read) and GET /bench/machines (the same handler, no
 * credential check: the baseline). This process loads it over loopback with a fixed number
 * of requests at a fixed concurrency, alternating the three so drift hits them alike, and
 * prints each authenticated rate as a ratio to the baseline. Goal: >= 0.8.
 *
 * Runs on the embedded database; set BENCH_DATABASE_URL to also run on PostgreSQL.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { BENCH_PASSWORD, startBenchServer } from "./fixtures/server-process.ts";

const REQUESTS = 4_000;
const CONCURRENCY = 32;
const ROUNDS = 5;
const MACHINES = 25;


async function json(url: string, path: string, init: { method?: string; token?: string; body?: unknown } = {}) {
  const res = await fetch(url + path, {
    method: init.method ?? "GET",
    headers: { ...(init.token ? { authorization: `Bearer ${init.token}` } : {}), ...(init.body ? { "content-type": "application/json" } : {}) },
    body: init.body ? JSON.stringify(init.body) : undefined,
  });
  if (!res.ok) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return res.json() as Promise<any>;
}

/** Requests per second for `REQUESTS` GETs at `CONCURRENCY` in flight. */
async function load(url: string, token?: string): Promise<number> {
  const headers = token ? { authorization: `Bearer ${token}` } : undefined;
  let next = 0;
  let failures = 0;
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next++ < REQUESTS) {
      const res = await fetch(url, { headers });
      if (!res.ok) failures++;
      await res.arrayBuffer();
    }
  }));
  if (failures) throw new Error(`${failures} requests failed`);
  return REQUESTS / ((performance.now() - started) / 1000);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function run(label: string, env: Record<string, string>) {
  const { proc, url } = await startBenchServer(env);
  try {
    const session = (await json(url, "/api/auth/login", { method: "POST", body: { username: "admin", password: BENCH_PASSWORD } })).token;
    const pat = (await json(url, "/api/tokens", { method: "POST", token: session, body: { name: "bench", scopes: ["machines:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() } })).token;
    const site = await json(url, "/api/sites", { method: "POST", token: session, body: { site_code: "BENCH", display_name: "Bench", company: "Bench" } });
    const key = (await json(url, `/api/sites/${site.id}/enrollment-key/rotate`, { method: "POST", token: session })).key;
    for (let i = 0; i < MACHINES; i++) {
      const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
      const publicKey = Buffer.from(await crypto.subtle.exportKey("raw", pair.publicKey)).toString("base64");
      await json(url, "/api/enroll", { method: "POST", body: { site_code: "BENCH", enrollment_key: key, machine_uid: `bench-${i}`, hostname: `HOST-${i}`, labels: {}, public_key: publicKey } });
    }
    const rates = { open: [] as number[], session: [] as number[], pat: [] as number[] };
    await load(`${url}/bench/machines`); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      rates.open.push(await load(`${url}/bench/machines`));
      rates.session.push(await load(`${url}/api/machines`, session));
      rates.pat.push(await load(`${url}/api/machines`, pat));
    }
    const open = median(rates.open);
    console.log(`\n${label}: GET machines, ${REQUESTS} requests x ${ROUNDS} rounds at concurrency ${CONCURRENCY} (median rate)`);
    console.log(`  baseline, no credential check   ${open.toFixed(0).padStart(7)} req/s`);
    for (const [what, xs] of [["session token (tss_)", rates.session], ["API token (tpat_)", rates.pat]] as const) {
      const rate = median(xs);
      const ratio = rate / open;
      console.log(`  ${what.padEnd(31)} ${rate.toFixed(0).padStart(7)} req/s   ratio ${ratio.toFixed(2)}  (goal >= 0.8: ${ratio >= 0.8 ? "met" : "NOT met"})`);
    }
  } finally {
    proc.kill("SIGTERM");
    await proc.exited;
  }
}

console.log(`bun ${Bun.version}, ${navigator.hardwareConcurrency} cores`);
const dataDir = mkdtempSync(join(tmpdir(), "tether-bench-auth-"));
try {
  await run("PGlite", { TETHER_DATA_DIR: dataDir, DATABASE_URL: "" });
} finally {
  rmSync(dataDir, { recursive: true, force: true });
}
const pgUrl = process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
if (pgUrl) {
  const schema = `bench_auth_${crypto.randomUUID().slice(0, 8)}`;
  const admin = postgres(pgUrl, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create schema ${schema}`);
  try {
    const url = new URL(pgUrl);
    url.searchParams.set("search_path", schema);
    await run("PostgreSQL", { DATABASE_URL: url.toString() });
  } finally {
    await admin.unsafe(`drop schema ${schema} cascade`);
    await admin.end();
  }
} else {
  console.log("\nPostgreSQL: skipped (set BENCH_DATABASE_URL)");
}
