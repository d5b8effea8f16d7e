/**
 * The web viewer's first load (issue 7, requirement 6): `bun bench/web.ts`.
 *
 * 10,000 machines are seeded by SQL; a real server process serves the built viewer; Debian's
 * chromium (driven by playwright-core, a fresh profile each time, so nothing is cached) signs
 * in and opens the machines page. Time to first row: from navigation start to the first
 * machine row in the DOM (a MutationObserver mark in the page). Baseline, same run: the same
 * browser loading a static page from the same server that fetches the same first page of
 * machines with one fetch() and writes the rows as plain HTML — no framework, no bundle.
 * Also prints the bundle: initial JavaScript + CSS (gzip) and the lazy chunks.
 * Goals: first row under 1 s on loopback; initial JavaScript under 300 KB compressed; the
 * terminal loaded only on the session page.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { buildWeb } from "../src/web/build.ts";
import { seedMachines } from "./fixtures/seed-machines.ts";
import { BENCH_PASSWORD, startBenchServer } from "./fixtures/server-process.ts";

const MACHINES = Number(process.env.BENCH_MACHINES ?? 10_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 7);
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const web = mkdtempSync(join(tmpdir(), "tether-bench-web-"));
const dataDir = mkdtempSync(join(tmpdir(), "tether-bench-web-db-"));
const build = await buildWeb(web);
const initial = build.files.filter((f) => f.name === build.entry || build.css.includes(f.name));
const lazy = build.files.filter((f) => !initial.includes(f));
const kb = (n: number) => `${(n / 1024).toFixed(1)} KB`;
console.log(`bundle: initial ${kb(initial.reduce((a, f) => a + f.gzip, 0))} gzip (${initial.map((f) => `${f.name} ${kb(f.gzip)}`).join(", ")})`);
console.log(`        lazy chunks: ${lazy.map((f) => `${f.name} ${kb(f.gzip)}`).join(", ")}`);

await seedMachines({ dataDir }, MACHINES, 20);
const { proc, url } = await startBenchServer({ TETHER_DATA_DIR: dataDir, DATABASE_URL: "", TETHER_WEB_DIST: web });
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
try {
  const login = await fetch(`${url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "admin", password: BENCH_PASSWORD }) });
  const token = ((await login.json()) as { token: string }).token;
  const cookie = { name: "tether_session", value: token, url, httpOnly: true, sameSite: "Lax" as const };

  // The baseline page: served by the bench's own tiny server on loopback, its fetch proxied to Tether.
  const baseline = Bun.serve({
    port: 0, hostname: "127.0.0.1",
    async fetch(req) {
      const u = new URL(req.url);
      if (u.pathname === "/") return new Response(`<!doctype html><table id=t></table><script type=module>const r=await fetch("/api/machines?limit=100");const {machines}=await r.json();document.getElementById("t").innerHTML=machines.map(m=>"<tr><td>"+m.hostname+"</td><td>"+m.status+"</td></tr>").join("")</script>`, { headers: { "content-type": "text/html" } });
      return fetch(url + u.pathname + u.search, { headers: { authorization: `Bearer ${token}` } });
    },
  });

  async function firstRow(target: string, selector: string, withCookie: boolean): Promise<number> {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    if (withCookie) await ctx.addCookies([cookie]);
    const page = await ctx.newPage();
    await page.addInitScript((sel: string) => {
      new MutationObserver((_, obs) => {
        if (document.querySelector(sel)) {
          performance.mark("first-row");
          obs.disconnect();
        }
      }).observe(document, { childList: true, subtree: true });
    }, selector);
    await page.goto(target);
    await page.waitForSelector(selector);
    const ms = await page.evaluate(() => performance.getEntriesByName("first-row")[0]!.startTime);
    await ctx.close();
    return ms;
  }

  const tether: number[] = [];
  const bare: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    bare.push(await firstRow(`http://127.0.0.1:${baseline.port}/`, "#t tr", false));
    tether.push(await firstRow(`${url}/`, "tbody tr[data-machine]", true));
  }
  baseline.stop(true);
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(`\nfirst row of the machines page, ${MACHINES} machines, ${RUNS} cold loads each (median; range):`);
  console.log(`  Tether viewer:            ${med(tether).toFixed(0)} ms (${Math.min(...tether).toFixed(0)}–${Math.max(...tether).toFixed(0)})`);
  console.log(`  baseline (bare HTML page): ${med(bare).toFixed(0)} ms (${Math.min(...bare).toFixed(0)}–${Math.max(...bare).toFixed(0)})`);
  console.log(`  ratio Tether / baseline:   ${(med(tether) / med(bare)).toFixed(2)}   goal: first row < 1000 ms ${med(tether) < 1000 ? "met" : "NOT met"}`);
} finally {
  await browser.close();
  proc.kill();
  await proc.exited;
  rmSync(web, { recursive: true, force: true });
  rmSync(dataDir, { recursive: true, force: true });
}
