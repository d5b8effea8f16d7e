import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually } from "../helpers/stores.ts";
import { enrolledMachine, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";
import { deriveMachineUid } from "../../src/agent/identity.ts";
import { StateDir } from "../../src/agent/state.ts";
import { expectNoSecrets, FAST_AGENT, freshMachine, killAllAgents, managedArgs, spawnAgent } from "./spawn.ts";

/** Real agent processes against a real server (PGlite is enough here: the agent is the subject). */
const mode = (p: string) => statSync(p).mode & 0o777;
const FAST = FAST_AGENT;

let app: TestApp;
let site: SiteWithKey;

beforeAll(async () => {
  app = await startTestApp("pglite");
  site = await siteWithKey(app);
});
afterAll(async () => {
  await killAllAgents();
  await app?.close();
});

/** No log line carries a key: the cak_ and cek_ secrets appear nowhere, only prefixes. */
describe("managed agent against a real server", () => {
  test("first run: key pair, enroll (201), state files 0600 in a 0700 dir, online; SIGTERM exits 0; the second run connects without enrolling", async () => {
    const m = freshMachine();
    const env = { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile };
    const a = spawnAgent(managedArgs(app.url, site, m.stateDir, [...FAST, "--department", "Finance", "--tag", "kiosk"]), env);
    await a.waitFor((e) => e.event === "enroll.done" && e.disposition === "new", 15_000, "enrolled");
    const online = await a.waitFor((e) => e.event === "connect.online", 15_000, "online");

    expect(mode(m.stateDir)).toBe(0o700);
    const files = readdirSync(m.stateDir).sort();
    expect(files).toEqual(["credentials.json", "private_key.pem", "public_key"]);
    for (const f of files) expect(mode(join(m.stateDir, f))).toBe(0o600);
    const creds = new StateDir(m.stateDir).credentials()!;
    expect(creds.key).toMatch(/^cak_[0-9a-f]{64}$/);
    expect(online.machine_id).toBe(creds.machine_id);
    expect(creds.machine_uid).toBe(deriveMachineUid(new StateDir(m.stateDir), { machineIdFile: m.machineIdFile, productUuidFile: "/nonexistent" }).uid);

    await eventually(async () => (await app.call("GET", `/api/machines/${creds.machine_id}`, { token: app.adminToken })).body?.status === "online", 5_000, "status online");
    const detail = await app.call("GET", `/api/machines/${creds.machine_id}`, { token: app.adminToken });
    expect(detail.body.site_code).toBe(site.code);
    expect(detail.body.labels.department).toBe("Finance");
    expect(detail.body.labels.tags).toEqual(["kiosk"]);

    expect(await a.stop("SIGTERM")).toBe(0);
    expect(a.logs.some((e) => e.event === "agent.stopped")).toBe(true);
    expectNoSecrets(a.lines, [creds.key, site.key]);

    // Second run: same state dir, even with a now-wrong enrollment key: it must not enroll again.
    const b = spawnAgent(managedArgs(app.url, { code: site.code, key: "cek_" + "0".repeat(64) }, m.stateDir, FAST), env);
    await b.waitFor((e) => e.event === "credentials.loaded", 10_000, "credentials loaded");
    const again = await b.waitFor((e) => e.event === "connect.online", 15_000, "online again");
    expect(again.machine_id).toBe(creds.machine_id);
    expect(b.logs.some((e) => String(e.event).startsWith("enroll."))).toBe(false);
    const keys = await app.call("GET", `/api/machines/${creds.machine_id}/keys`, { token: app.adminToken });
    expect(keys.status).toBe(200);
    const list = Array.isArray(keys.body) ? keys.body : keys.body.keys;
    expect(list).toHaveLength(1); // a reuse enrollment would have minted a second key
    expect(list[0].revoked_at).toBeNull();
    expect(await b.stop("SIGINT")).toBe(0);
    expectNoSecrets(b.lines, [creds.key, site.key]);
  });

  test("401 (wrong enrollment key): retried on the slow interval, forever, key never logged", async () => {
    const m = freshMachine();
    const wrong = "cek_" + "ab".repeat(32);
    const a = spawnAgent(managedArgs(app.url, { code: site.code, key: wrong }, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await eventually(() => a.logs.filter((e) => e.event === "enroll.retry" && e.status === 401).length >= 3, 10_000, "three 401 retries");
    const retries = a.logs.filter((e) => e.event === "enroll.retry");
    for (const r of retries) {
      expect(r.retry_in_ms).toBeGreaterThanOrEqual(270);
      expect(r.retry_in_ms).toBeLessThanOrEqual(330);
      expect(r.level).toBe(50); // error: somebody must fix the key
    }
    expect(readdirSync(m.stateDir)).not.toContain("credentials.json");
    expect(await a.stop()).toBe(0);
    expectNoSecrets(a.lines, [wrong]);
  });

  test("409 (machine bound to another site): slow retry, no credentials stored", async () => {
    const m = freshMachine();
    const other = await siteWithKey(app);
    const uid = deriveMachineUid(new StateDir(join(m.dir, "probe")), { machineIdFile: m.machineIdFile, productUuidFile: "/nonexistent" }).uid;
    await enrolledMachine(app, other, { machine_uid: uid });
    const a = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await eventually(() => a.logs.filter((e) => e.event === "enroll.retry" && e.status === 409).length >= 2, 10_000, "two 409 retries");
    expect(a.logs.find((e) => e.event === "enroll.retry")!.retry_in_ms).toBeGreaterThanOrEqual(270);
    expect(readdirSync(m.stateDir)).not.toContain("credentials.json");
    expect(await a.stop()).toBe(0);
  });

  test("429 from the real limiter: the agent waits what Retry-After says", async () => {
    const limited = await siteWithKey(app);
    // Use up this (site code, loopback IP) window: 60 attempts a minute.
    for (let i = 0; i < 60; i++) {
      await app.call("POST", "/api/enroll", { body: { site_code: limited.code, enrollment_key: limited.key, machine_uid: `muid_x${i}`, hostname: `h${i}`, public_key: Buffer.alloc(32, 1).toString("base64") } });
    }
    const probe = await app.call("POST", "/api/enroll", { body: { site_code: limited.code, enrollment_key: limited.key, machine_uid: "muid_probe", hostname: "p", public_key: Buffer.alloc(32, 1).toString("base64") } });
    expect(probe.status).toBe(429);
    const retryAfter = Number(probe.headers.get("retry-after"));
    const m = freshMachine();
    const a = spawnAgent(managedArgs(app.url, limited, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    const r = await a.waitFor((e) => e.event === "enroll.retry", 10_000, "a retry");
    expect(r.status).toBe(429);
    expect(r.retry_in_ms).toBeGreaterThan(1_000); // not the 200 ms short retry
    // Never earlier than asked (its own 429 may say a second less than the probe's), up to 10 % later.
    expect(r.retry_in_ms).toBeGreaterThanOrEqual((retryAfter - 1) * 1000);
    expect(r.retry_in_ms).toBeLessThanOrEqual(retryAfter * 1100);
    await Bun.sleep(500);
    expect(a.logs.filter((e) => e.event === "enroll.attempt")).toHaveLength(1); // it is waiting
    expect(await a.stop()).toBe(0); // SIGTERM during a long wait still exits at once
  });

  test("network errors: short retries; SIGTERM while retrying exits 0", async () => {
    const m = freshMachine();
    const dead = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response("") });
    const url = `http://127.0.0.1:${dead.port}`;
    dead.stop(true);
    const a = spawnAgent(managedArgs(url, site, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await eventually(() => a.logs.filter((e) => e.event === "enroll.retry").length >= 3, 10_000, "three network retries");
    for (const r of a.logs.filter((e) => e.event === "enroll.retry")) {
      expect(r.reason).toMatch(/^network/);
      expect(r.retry_in_ms).toBeLessThanOrEqual(220);
    }
    expect(await a.stop()).toBe(0);
  });
});
