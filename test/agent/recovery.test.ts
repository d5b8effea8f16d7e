import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { EXIT } from "../../src/agent/credentials.ts";
import { FILES, StateDir } from "../../src/agent/state.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually } from "../helpers/stores.ts";
import { siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";
import { expectNoSecrets, FAST_AGENT, freshMachine, killAllAgents, managedArgs, spawnAgent } from "./spawn.ts";

/**
 * What a managed agent does at start with a state dir that is not simply its own: one copied to
 * another machine (a cloned VM: its machine_uid differs from the enrolled one), or one whose
 * credentials.json a power loss emptied. Real agent processes against a real server.
 */
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

/** A machine enrolled by a real agent run, then stopped: its state dir and machine-id file. */
async function enrolled() {
  const m = freshMachine();
  const a = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
  await a.waitFor((e) => e.event === "connect.online", 15_000, "online");
  expect(await a.stop()).toBe(0);
  return { ...m, creds: new StateDir(m.stateDir).credentials()!, publicKey: readFileSync(join(m.stateDir, FILES.publicKey), "utf8") };
}

/** A copy of `m`'s state dir on "another machine" (another machine-id). */
function cloneOf(m: { stateDir: string }) {
  const other = freshMachine();
  cpSync(m.stateDir, other.stateDir, { recursive: true });
  return other;
}

const keysOf = async (machineId: string) => {
  const r = await app.call("GET", `/api/machines/${machineId}/keys`, { token: app.adminToken });
  return (Array.isArray(r.body) ? r.body : r.body.keys) as Array<{ revoked_at: string | null }>;
};

describe("a cloned state dir", () => {
  test("with an enrollment key: the copy enrolls as a new machine with a fresh key pair; both run side by side", async () => {
    const original = await enrolled();
    const copy = cloneOf(original);
    const c = spawnAgent(managedArgs(app.url, site, copy.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: copy.machineIdFile });
    const warned = await c.waitFor((e) => e.event === "identity.cloned", 10_000, "clone warning");
    expect(warned.level).toBe(40);
    expect(warned.stored_machine_uid).toBe(original.creds.machine_uid);
    expect(warned.machine_uid).not.toBe(original.creds.machine_uid);
    const done = await c.waitFor((e) => e.event === "enroll.done", 10_000, "enrolled");
    expect(done.disposition).toBe("new");
    const online = await c.waitFor((e) => e.event === "connect.online", 10_000, "the copy online");
    expect(online.machine_id).not.toBe(original.creds.machine_id);
    const creds = new StateDir(copy.stateDir).credentials()!;
    expect(creds.machine_id).toBe(online.machine_id);
    expect(creds.machine_uid).toBe(warned.machine_uid);
    expect(readFileSync(join(copy.stateDir, FILES.publicKey), "utf8")).not.toBe(original.publicKey);

    // The original is untouched and still itself; the two do not supersede each other.
    const o = spawnAgent(managedArgs(app.url, site, original.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: original.machineIdFile });
    const back = await o.waitFor((e) => e.event === "connect.online", 10_000, "the original online");
    expect(back.machine_id).toBe(original.creds.machine_id);
    expect(o.logs.some((e) => e.event === "identity.cloned" || String(e.event).startsWith("enroll."))).toBe(false);
    await Bun.sleep(1_000);
    for (const a of [o, c]) expect(a.logs.filter((e) => e.event === "connect.closed")).toEqual([]);
    for (const id of [original.creds.machine_id, creds.machine_id]) {
      expect((await app.call("GET", `/api/machines/${id}`, { token: app.adminToken })).body.status).toBe("online");
    }
    // A restart of the copy uses its own new credentials.
    expect(await c.stop()).toBe(0);
    const again = spawnAgent(managedArgs(app.url, site, copy.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: copy.machineIdFile });
    expect((await again.waitFor((e) => e.event === "connect.online", 10_000, "online again")).machine_id).toBe(creds.machine_id);
    expect(again.logs.some((e) => e.event === "identity.cloned")).toBe(false);
    for (const a of [o, again]) expect(await a.stop()).toBe(0);
    for (const a of [c, o, again]) expectNoSecrets(a.lines, [original.creds.key, creds.key, site.key]);
  }, 60_000);

  test("a source unreadable at a later start (product_uuid as non-root) is not a clone; nor is an older agent's uid that differs", async () => {
    const m = freshMachine();
    const productUuid = join(m.dir, "product_uuid");
    writeFileSync(productUuid, "4C4C4544-0042-3510-8051-B7C04F4E3232\n");
    const env = { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile, TETHER_AGENT_PRODUCT_UUID_FILE: productUuid };
    const a = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), env);
    const first = await a.waitFor((e) => e.event === "connect.online", 15_000, "online");
    expect(await a.stop()).toBe(0);
    const creds = new StateDir(m.stateDir).credentials()!;
    expect(Object.keys(creds.uid_parts ?? {}).sort()).toEqual(["machine-id", "product_uuid"]);

    // The same machine, product_uuid unreadable this time: its uid differs, its machine-id does not.
    const b = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), { ...env, TETHER_AGENT_PRODUCT_UUID_FILE: "/nonexistent" });
    expect((await b.waitFor((e) => e.event === "connect.online", 15_000, "online")).machine_id).toBe(first.machine_id);
    expect(b.logs.some((e) => e.event === "identity.cloned" || String(e.event).startsWith("enroll."))).toBe(false);
    expect(await b.stop()).toBe(0);

    // Credentials written by an older agent (no fingerprints) whose uid differs now: used, with a warning.
    const state = new StateDir(m.stateDir);
    const { uid_parts: _, ...old } = state.credentials()!;
    state.saveCredentials({ ...old, machine_uid: "muid_" + "0".repeat(64) });
    const c = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), env);
    expect((await c.waitFor((e) => e.event === "connect.online", 15_000, "online")).machine_id).toBe(first.machine_id);
    expect(c.logs.find((e) => e.event === "identity.unverified")?.level).toBe(40);
    expect(c.logs.some((e) => String(e.event).startsWith("enroll."))).toBe(false);
    expect(await c.stop()).toBe(0);
  }, 60_000);

  test("without an enrollment key: a clear message and exit code 6; the state dir is left as it was", async () => {
    const original = await enrolled();
    const copy = cloneOf(original);
    const before = readFileSync(join(copy.stateDir, FILES.credentials), "utf8");
    const a = spawnAgent(["--server", app.url, "--state-dir", copy.stateDir, ...FAST], { TETHER_AGENT_MACHINE_ID_FILE: copy.machineIdFile });
    expect(await a.proc.exited).toBe(EXIT.CLONED);
    expect(EXIT.CLONED).toBe(6);
    const fatal = a.logs.find((e) => e.event === "agent.fatal");
    expect(fatal.msg).toContain("was enrolled on another machine");
    expect(fatal.msg).toContain("--enrollment-key");
    expect(a.logs.some((e) => e.event === "connect.attempt")).toBe(false); // never posed as the original
    expect(readFileSync(join(copy.stateDir, FILES.credentials), "utf8")).toBe(before);
    expectNoSecrets(a.lines, [original.creds.key]);
  }, 30_000);
});

describe("credentials.json emptied (a power loss under an older agent)", () => {
  test("with an enrollment key: re-enrolls as the same machine, the old key revoked", async () => {
    const m = await enrolled();
    writeFileSync(join(m.stateDir, FILES.credentials), "");
    const a = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    const warned = await a.waitFor((e) => e.event === "state.unusable", 10_000, "warning");
    expect(warned.problem).toContain("is empty");
    expect((await a.waitFor((e) => e.event === "enroll.done", 10_000, "enrolled")).disposition).toBe("reuse");
    expect((await a.waitFor((e) => e.event === "connect.online", 10_000, "online")).machine_id).toBe(m.creds.machine_id);
    const creds = new StateDir(m.stateDir).credentials()!;
    expect(creds.machine_id).toBe(m.creds.machine_id);
    expect(creds.key).not.toBe(m.creds.key);
    const keys = await keysOf(m.creds.machine_id);
    expect(keys.filter((k) => k.revoked_at === null)).toHaveLength(1);
    expect(await a.stop()).toBe(0);
    expectNoSecrets(a.lines, [m.creds.key, creds.key, site.key]);
  }, 30_000);

  test("without an enrollment key: says what is wrong and how to recover, exit 3, no connection attempts", async () => {
    const m = await enrolled();
    writeFileSync(join(m.stateDir, FILES.credentials), "");
    const a = spawnAgent(["--server", app.url, "--state-dir", m.stateDir, ...FAST], { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    expect(await a.proc.exited).toBe(EXIT.STATE);
    const fatal = a.logs.find((e) => e.event === "agent.fatal");
    expect(fatal.msg).toContain(`${join(m.stateDir, FILES.credentials)} is empty`);
    expect(fatal.msg).toContain("To recover");
    expect(fatal.msg).toContain("TETHER_AGENT_ENROLLMENT_KEY");
    expect(a.logs.some((e) => e.event === "connect.attempt")).toBe(false);
  }, 30_000);
});

describe("the private key lost, the credentials still there", () => {
  test("without an enrollment key: exit 3 and no new key pair is written (a later start must not connect with the wrong one)", async () => {
    const m = await enrolled();
    rmSync(join(m.stateDir, FILES.privateKey));
    for (let run = 0; run < 2; run++) {
      const a = spawnAgent(["--server", app.url, "--state-dir", m.stateDir, ...FAST], { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
      expect(await a.proc.exited).toBe(EXIT.STATE);
      expect(a.logs.find((e) => e.event === "agent.fatal").msg).toContain(`${join(m.stateDir, FILES.privateKey)} is missing`);
      expect(existsSync(join(m.stateDir, FILES.privateKey))).toBe(false);
    }
  }, 30_000);

  test("with an enrollment key: a fresh key pair, re-enrolled as the same machine", async () => {
    const m = await enrolled();
    rmSync(join(m.stateDir, FILES.privateKey));
    const a = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await a.waitFor((e) => e.event === "state.unusable", 10_000, "warning");
    expect((await a.waitFor((e) => e.event === "connect.online", 10_000, "online")).machine_id).toBe(m.creds.machine_id);
    expect(readFileSync(join(m.stateDir, FILES.publicKey), "utf8")).not.toBe(m.publicKey);
    expect(await a.stop()).toBe(0);
  }, 30_000);
});
