import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { startTestApp, type TestApp } from "../helpers/app.ts";

const SOMAXCONN = Number(readFileSync("/proc/sys/net/core/somaxconn", "utf8"));

/** The backlog the kernel holds for a listening port (`ss`'s Send-Q of a LISTEN socket). */
function backlogOf(port: number): number[] {
  const out = Bun.spawnSync(["ss", "-Hltn", `sport = :${port}`], { stdout: "pipe", stderr: "pipe" });
  if (out.exitCode !== 0) throw new Error(`ss failed (iproute2 is needed): ${out.stderr}`);
  return out.stdout.toString().trim().split("\n").filter(Boolean).map((line) => Number(line.trim().split(/\s+/)[2]));
}

/**
 * How many of `n` TCP connects a port completes while this process's thread is blocked: the
 * kernel completes handshakes into the listen queue without the server, until the queue is full;
 * after that it drops the SYNs, and their retries (1 s, 3 s) come after the 2 s counted here.
 */
async function connectsWhileBlocked(port: number, n: number): Promise<number> {
  const child = Bun.spawn([process.execPath, "-e", `
    console.log("ready");
    await Bun.sleep(300);
    let open = 0;
    for (let i = 0; i < ${n}; i++) Bun.connect({ hostname: "127.0.0.1", port: ${port}, socket: { open() { open++; }, data() {}, error() {} } }).catch(() => {});
    await Bun.sleep(2000);
    console.log(open);
    process.exit(0);`], { stdout: "pipe", stderr: "inherit" });
  const reader = child.stdout.getReader();
  expect(new TextDecoder().decode((await reader.read()).value)).toContain("ready");
  const until = performance.now() + 3_000;
  while (performance.now() < until); // the server's thread busy, as in a storm's handshakes
  let text = "";
  for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) text += new TextDecoder().decode(chunk.value);
  await child.exited;
  return Number(text.trim().split("\n").at(-1));
}

describe("the listen queue", () => {
  const apps: TestApp[] = [];
  afterAll(async () => {
    for (const app of apps) await app.close();
  });

  test("is 4096 long (or the kernel's cap), not Bun's 512, so a burst of connects is queued, not dropped", async () => {
    const app = await startTestApp("pglite");
    apps.push(app);
    const port = Number(new URL(app.url).port);
    expect(backlogOf(port)).toEqual([Math.min(4096, SOMAXCONN)]);
    // 2,000 connects while the server is busy: all queued (with Bun's 512, about half dropped).
    const n = Math.min(2_000, SOMAXCONN);
    expect(await connectsWhileBlocked(port, n)).toBe(n);
    expect((await app.call("GET", "/healthz")).status).toBe(200);
  });

  test("TETHER_LISTEN_BACKLOG=0 leaves Bun's own", async () => {
    const app = await startTestApp("pglite", { env: { TETHER_LISTEN_BACKLOG: "0" } });
    apps.push(app);
    const port = Number(new URL(app.url).port);
    expect(backlogOf(port)).toEqual([Math.min(512, SOMAXCONN)]);
    expect(await connectsWhileBlocked(port, 2_000)).toBeLessThan(1_500);
  });
});
