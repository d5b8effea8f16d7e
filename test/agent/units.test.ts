import { describe, expect, test } from "bun:test";
import { chmodSync, mkdtempSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Inventory } from "../../src/protocol/agent.ts";
import { Backoff, backoffDelay, jittered, parseRetryAfter } from "../../src/agent/backoff.ts";
import { agentSocketUrl, ConfigError, parseConfig } from "../../src/agent/config.ts";
import { deriveMachineUid, isPlaceholderId, loadOrCreateIdentity, signNonce } from "../../src/agent/identity.ts";
import { collectInventory, storableStrings } from "../../src/agent/inventory.ts";
import { unstorableAt } from "../../src/protocol/storable.ts";
import { FILES, StateDir, StateError } from "../../src/agent/state.ts";
import { nextDelay } from "../../src/agent/agent.ts";
import { CLOSE } from "../../src/protocol/agent.ts";

const tmp = () => mkdtempSync(join(tmpdir(), "tether-agent-unit-"));
const mode = (p: string) => statSync(p).mode & 0o777;

describe("backoff", () => {
  test("delays stay within [ceiling/2, ceiling], the ceiling doubles and is capped", () => {
    const o = { baseMs: 100, capMs: 3_000 };
    for (let attempt = 0; attempt < 12; attempt++) {
      const ceiling = Math.min(3_000, 100 * 2 ** attempt);
      for (let i = 0; i < 200; i++) {
        const d = backoffDelay(attempt, o);
        expect(d).toBeGreaterThanOrEqual(ceiling / 2);
        expect(d).toBeLessThanOrEqual(ceiling);
      }
    }
    expect(backoffDelay(1_000, o)).toBeLessThanOrEqual(3_000);
    expect(backoffDelay(3, { ...o, random: () => 0 })).toBe(400);
    expect(backoffDelay(3, { ...o, random: () => 1 })).toBe(800);
  });

  test("jitter spreads a fleet: many agents at one attempt do not pick one delay", () => {
    const delays = new Set(Array.from({ length: 100 }, () => backoffDelay(5, { baseMs: 1_000, capMs: 30_000 })));
    expect(delays.size).toBeGreaterThan(50);
  });

  test("Backoff grows until reset", () => {
    const b = new Backoff({ baseMs: 10, capMs: 1_000, random: () => 1 });
    expect([b.next(), b.next(), b.next(), b.next()]).toEqual([10, 20, 40, 80]);
    b.reset();
    expect(b.next()).toBe(10);
    expect(jittered(1_000, 0.1, () => 0)).toBe(900);
    expect(jittered(1_000, 0.1, () => 1)).toBe(1_100);
  });

  test("Retry-After: seconds, an HTTP date, or nothing", () => {
    expect(parseRetryAfter("7")).toBe(7_000);
    const now = Date.parse("2030-01-01T00:00:00Z");
    expect(parseRetryAfter(new Date(now + 5_000).toUTCString(), now)).toBe(5_000);
    expect(parseRetryAfter(null)).toBeNull();
    expect(parseRetryAfter("soon")).toBeNull();
  });

  test("refusals wait the slow interval, SUPERSEDED backs off to the cap, a welcomed session resets", () => {
    const config = { refusedRetryMs: 60_000, reconnectCapMs: 30_000 };
    const b = new Backoff({ baseMs: 1_000, capMs: 30_000 });
    for (const code of [CLOSE.KEY_REVOKED, CLOSE.UNKNOWN_KEY, CLOSE.MACHINE_REMOVED]) {
      const d = nextDelay({ code, reason: "", welcomed: false, byUs: false }, b, config);
      expect(d).toBeGreaterThanOrEqual(54_000);
      expect(d).toBeLessThanOrEqual(66_000);
    }
    const s = nextDelay({ code: CLOSE.SUPERSEDED, reason: "", welcomed: true, byUs: false }, b, config);
    expect(s).toBeGreaterThanOrEqual(27_000);
    for (let i = 0; i < 10; i++) nextDelay({ code: 1006, reason: "", welcomed: false, byUs: false }, b, config);
    expect(nextDelay({ code: 1006, reason: "", welcomed: false, byUs: false }, b, config)).toBeGreaterThanOrEqual(15_000);
    expect(nextDelay({ code: CLOSE.SERVER_STOPPING, reason: "", welcomed: true, byUs: false }, b, config)).toBeLessThanOrEqual(1_000);
  });
});

describe("config", () => {
  test("flags, env fallbacks and labels", () => {
    const p = parseConfig(["--server", "http://127.0.0.1:8080/", "--state-dir", "/tmp/x", "--tag", "a", "--tag", "b", "--device-type", "laptop"], { TETHER_AGENT_SITE_CODE: "HQ", TETHER_AGENT_ENROLL_RETRY_MS: "1234" });
    if (p.kind !== "run") throw new Error("expected run");
    expect(p.config.server).toBe("http://127.0.0.1:8080");
    expect(p.config.siteCode).toBe("HQ");
    expect(p.config.enrollRetryMs).toBe(1234);
    expect(p.config.enrollShortRetryMs).toBe(30_000);
    expect(p.config.labels).toEqual({ tags: ["a", "b"], device_type: "laptop" });
    expect(agentSocketUrl("https://t.example/base")).toBe("wss://t.example/base/ws/agent");
    expect(agentSocketUrl("http://127.0.0.1:1")).toBe("ws://127.0.0.1:1/ws/agent");
    expect(parseConfig(["--help"]).kind).toBe("help");
    expect(() => parseConfig(["--state-dir", "/x"], {})).toThrow(ConfigError);
    expect(() => parseConfig(["--server", "ftp://x", "--state-dir", "/x"], {})).toThrow(ConfigError);
    expect(() => parseConfig(["--server", "http://x", "--state-dir", "/x", "--enroll-retry-ms", "-1"], {})).toThrow(ConfigError);
  });
});

describe("identity and state", () => {
  test("machine_uid is stable, hashed, and uses machine-id plus a real product_uuid", () => {
    const dir = tmp();
    const state = new StateDir(join(dir, "state"));
    state.ensure();
    writeFileSync(join(dir, "machine-id"), "0123456789abcdef0123456789abcdef\n");
    writeFileSync(join(dir, "uuid"), "4c4c4544-0042-3510-8052-b4c04f384e32\n");
    const src = { machineIdFile: join(dir, "machine-id"), productUuidFile: join(dir, "uuid") };
    const a = deriveMachineUid(state, src);
    expect(a.uid).toMatch(/^muid_[0-9a-f]{64}$/);
    expect(a.sources).toEqual(["machine-id", "product_uuid"]);
    expect(deriveMachineUid(new StateDir(join(dir, "other")), src).uid).toBe(a.uid); // not from the state dir
    const expected = new Bun.CryptoHasher("sha256").update("tether:machine_uid:v1|machine-id:0123456789abcdef0123456789abcdef|product_uuid:4C4C4544-0042-3510-8052-B4C04F384E32").digest("hex");
    expect(a.uid).toBe(`muid_${expected}`);
    const onlyMachineId = deriveMachineUid(state, { ...src, productUuidFile: join(dir, "missing") });
    expect(onlyMachineId.sources).toEqual(["machine-id"]);
    expect(onlyMachineId.uid).not.toBe(a.uid);
  });

  test("placeholder product UUIDs and machine-ids are rejected; the random fallback is persisted", () => {
    expect(isPlaceholderId("00000000-0000-0000-0000-000000000000")).toBe(true);
    expect(isPlaceholderId("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF")).toBe(true);
    expect(isPlaceholderId("4c4c4544-0042-3510-8052-b4c04f384e32")).toBe(false);
    const dir = tmp();
    const state = new StateDir(join(dir, "state"));
    state.ensure();
    writeFileSync(join(dir, "machine-id"), "00000000000000000000000000000000\n");
    writeFileSync(join(dir, "uuid"), "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\n");
    const src = { machineIdFile: join(dir, "machine-id"), productUuidFile: join(dir, "uuid") };
    const a = deriveMachineUid(state, src);
    expect(a.sources).toEqual(["random"]);
    expect(mode(state.path(FILES.seed))).toBe(0o600);
    expect(deriveMachineUid(state, src).uid).toBe(a.uid); // same seed on the next run
    const other = new StateDir(join(dir, "state2"));
    other.ensure();
    expect(deriveMachineUid(other, src).uid).not.toBe(a.uid); // another install: another seed
    writeFileSync(join(dir, "uuid"), "00000000-0000-0000-0000-000000000000\n");
    writeFileSync(join(dir, "machine-id"), "uninitialized\n");
    expect(deriveMachineUid(state, src).sources).toEqual(["random"]);
  });

  test("key pair: generated once, stored 0600 in a 0700 dir, reloaded, signs nonces the public key verifies", async () => {
    const dir = join(tmp(), "state");
    const state = new StateDir(dir);
    state.ensure();
    expect(mode(dir)).toBe(0o700);
    const first = await loadOrCreateIdentity(state);
    expect(first.created).toBe(true);
    expect(Buffer.from(first.identity.publicKey, "base64")).toHaveLength(32);
    expect(mode(state.path(FILES.privateKey))).toBe(0o600);
    expect(mode(state.path(FILES.publicKey))).toBe(0o600);
    const again = await loadOrCreateIdentity(state);
    expect(again.created).toBe(false);
    expect(again.identity.publicKey).toBe(first.identity.publicKey);
    const nonce = crypto.getRandomValues(new Uint8Array(32));
    const sig = await signNonce(again.identity.privateKey, nonce);
    const pub = await crypto.subtle.importKey("raw", Buffer.from(first.identity.publicKey, "base64"), { name: "Ed25519" }, true, ["verify"]);
    expect(await crypto.subtle.verify({ name: "Ed25519" }, pub, sig, nonce)).toBe(true);
  });

  test("loose permissions are tightened; corrupt credentials are a hard stop, not a re-enrollment", () => {
    const dir = join(tmp(), "state");
    const state = new StateDir(dir);
    state.ensure();
    writeFileSync(state.path(FILES.credentials), "{not json", { mode: 0o644 });
    chmodSync(dir, 0o755);
    expect(state.ensure()).toHaveLength(1);
    expect(mode(dir)).toBe(0o700);
    expect(() => state.credentials()).toThrow(StateError);
    expect(mode(state.path(FILES.credentials))).toBe(0o600);
    expect(new StateDir(join(dir, "none")).credentials()).toBeNull();
  });
});

describe("inventory", () => {
  test("text the server would refuse is cleaned, not reported: a NUL dropped, an unpaired surrogate replaced", () => {
    const cleaned = storableStrings({ os: { name: "Deb\u0000ian" }, users: ["\ud800x"], memory_bytes: 8, elevated: false });
    expect(cleaned).toEqual({ os: { name: "Debian" }, users: ["\ufffdx"], memory_bytes: 8, elevated: false });
    expect(unstorableAt(collectInventory())).toBeNull();
  });

  test("validates against the protocol's Inventory schema and has the M4 fields", () => {
    const inv = collectInventory();
    const parsed = Inventory.safeParse(inv);
    expect(parsed.success).toBe(true);
    expect(inv.os?.name).toBeTruthy();
    expect(inv.kernel).toBeTruthy();
    expect(inv.cpu?.cores).toBeGreaterThan(0);
    expect(inv.memory_bytes).toBeGreaterThan(0);
    expect(inv.disks?.some((d) => d.mount === "/" && d.size_bytes! > 0)).toBe(true);
    expect(inv.hostname).toBeTruthy();
    expect(Array.isArray(inv.private_ips)).toBe(true);
    expect(Array.isArray(inv.macs)).toBe(true);
    expect(Array.isArray(inv.users)).toBe(true);
    expect(inv.uptime_s).toBeGreaterThan(0);
    expect(typeof inv.timezone).toBe("string");
    expect(inv.agent_version).toMatch(/^\d+\.\d+\.\d+/);
    expect(inv.elevated).toBe(process.getuid!() === 0);
  });
});
