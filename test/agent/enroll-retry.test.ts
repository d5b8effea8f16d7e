import { afterAll, describe, expect, test } from "bun:test";
import pino from "pino";
import { enrollUntilDone } from "../../src/agent/enroll.ts";

/**
 * Enrollment's 429 handling against a stand-in server: Retry-After is a minimum the agent must
 * not undercut (the ±10 % of the fixed intervals would), and `Retry-After: 0` is no licence to
 * retry at once.
 */
let retryAfter = "0";
const server = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => Response.json({ error_code: "RATE_LIMITED" }, { status: 429, headers: { "retry-after": retryAfter } }) });
afterAll(() => server.stop(true));

/** The delay the agent chose after one 429 (it is stopped before it waits). */
async function firstRetryDelay(header: string, shortRetryMs: number): Promise<number> {
  retryAfter = header;
  const logs: any[] = [];
  const stop = new AbortController();
  const log = pino({ level: "debug" }, { write: (line: string) => {
    const e = JSON.parse(line);
    logs.push(e);
    if (e.event === "enroll.retry") stop.abort();
  } });
  const done = await enrollUntilDone({
    server: `http://127.0.0.1:${server.port}`,
    request: { site_code: "HQ", enrollment_key: "cek_" + "1".repeat(64), machine_uid: "muid_x", hostname: "h", public_key: Buffer.alloc(32, 1).toString("base64") },
    slowRetryMs: 300_000,
    shortRetryMs,
  }, log, stop.signal);
  expect(done).toBeNull();
  const retry = logs.find((e) => e.event === "enroll.retry");
  expect(retry.status).toBe(429);
  return retry.retry_in_ms;
}

describe("enrollment: 429 with Retry-After", () => {
  test("Retry-After: 0 waits at least a second", async () => {
    for (let i = 0; i < 5; i++) expect(await firstRetryDelay("0", 200)).toBeGreaterThanOrEqual(1_000);
  });

  test("a Retry-After equal to the short retry interval is not jittered below it", async () => {
    // Equal values used to fall into the ±10 % branch: 20 tries make an early one near certain.
    for (let i = 0; i < 20; i++) {
      const d = await firstRetryDelay("30", 30_000);
      expect(d).toBeGreaterThanOrEqual(30_000);
      expect(d).toBeLessThanOrEqual(33_000);
    }
  });

  test("an HTTP-date in the past counts as 0: still a second", async () => {
    expect(await firstRetryDelay(new Date(Date.now() - 60_000).toUTCString(), 200)).toBeGreaterThanOrEqual(1_000);
  });
});
