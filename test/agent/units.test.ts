import { describe, expect, spyOn, test } from "bun:test";
import fs, { chmodSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Inventory } from "../../src/protocol/agent.ts";
import { Backoff, backoffDelay, jittered, parseRetryAfter, retryAfterDelay } from "../../src/agent/backoff.ts";
import { agentSocketUrl, ConfigError, parseConfig } from "../../src/agent/config.ts";
import { deriveMachineUid, isPlaceholderId, loadOrCreateIdentity, signNonce } from "../../src/agent/identity.ts";
import { collectInventory, storableStrings } from "../../src/agent/inventory.ts";
import { unstorableAt } from "../../src/protocol/storable.ts";
import { CorruptCredentials, FILES, StateDir } from "../../src/agent/state.ts";
import { nextDelay } from "../../src/agent/agent.ts";
import { CLOSE } from "../../src/protocol/agent.ts";

const tmp = () => mkdtempSync(join(tmpdir(), "tether-agent-unit-"));
const origOpen = fs.openSync;
const origFsync = fs.fsyncSync;
const origRename = fs.renameSync;
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

  test("a Retry-After wait is never shorter than asked, at least 1 s, and jittered upwards only", () => {
    expect(retryAfterDelay(30_000, 0.1, 1_000, () => 0)).toBe(30_000);
    expect(retryAfterDelay(30_000, 0.1, 1_000, () => 1)).toBe(33_000);
    expect(retryAfterDelay(0, 0.1, 1_000, () => 0)).toBe(1_000);
    for (let i = 0; i < 200; i++) {
      const d = retryAfterDelay(7_000);
      expect(d).toBeGreaterThanOrEqual(7_000);
      expect(d).toBeLessThanOrEqual(7_700);
    }
  });

  test("Retry-After: seconds, an HTTP date, or nothing", () => {
    expect(parseRetryAfter("7")).toBe(7_000);
    const now = Date.parse("2030-01-01T00:00:00Z");
    expect(parseRetryAfter(new Date(now + 5_000).toUTCString(), now)).toBe(5_000);
    expect(parseRetryAfter(null)).toBeNull();
    expect(parseRetryAfter("soon")).toBeNull();
  });

  test("refusals wait the slow interval, SUPERSEDED backs off to the cap, a lasting welcomed session resets", () => {
    const config = { refusedRetryMs: 60_000, reconnectCapMs: 30_000 };
    const b = new Backoff({ baseMs: 1_000, capMs: 30_000 });
    const end = (code: number, welcomed: boolean, connectedMs = 0) => ({ code, reason: "", welcomed, challenged: welcomed, byUs: false, connectedMs });
    for (const code of [CLOSE.KEY_REVOKED, CLOSE.UNKNOWN_KEY, CLOSE.MACHINE_REMOVED, CLOSE.MACHINE_DISABLED, CLOSE.UNSUPPORTED_PROTOCOL]) {
      const d = nextDelay(end(code, false), b, config);
      expect(d).toBeGreaterThanOrEqual(54_000);
      expect(d).toBeLessThanOrEqual(66_000);
    }
    const s = nextDelay(end(CLOSE.SUPERSEDED, true, 1_000), b, config);
    expect(s).toBeGreaterThanOrEqual(27_000);
    for (let i = 0; i < 10; i++) nextDelay(end(1006, false), b, config);
    expect(nextDelay(end(1006, false), b, config)).toBeGreaterThanOrEqual(15_000);
    expect(nextDelay(end(CLOSE.SERVER_STOPPING, true, 30_000), b, config)).toBeLessThanOrEqual(1_000);
  });

  test("a server that welcomes and drops at once gets no fast reconnects: only a connection that lasted the cap resets", () => {
    const config = { refusedRetryMs: 60_000, reconnectCapMs: 30_000 };
    const b = new Backoff({ baseMs: 1_000, capMs: 30_000 });
    const delays = Array.from({ length: 8 }, () => nextDelay({ code: 1006, reason: "", welcomed: true, challenged: true, byUs: false, connectedMs: 200 }, b, config));
    expect(delays.slice(-3).every((d) => d >= 15_000)).toBe(true); // backed off to the cap, welcome or not
    // Up for nearly the cap: still no reset.
    expect(nextDelay({ code: 1000, reason: "", welcomed: true, challenged: true, byUs: false, connectedMs: 29_999 }, b, config)).toBeGreaterThanOrEqual(15_000);
    // Up for the cap: the next drop is treated as a one-off.
    expect(nextDelay({ code: 1000, reason: "", welcomed: true, challenged: true, byUs: false, connectedMs: 30_000 }, b, config)).toBeLessThanOrEqual(1_000);
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

  test("loose permissions are tightened; corrupt or empty credentials are reported as such, with the file", () => {
    const dir = join(tmp(), "state");
    const state = new StateDir(dir);
    state.ensure();
    writeFileSync(state.path(FILES.credentials), "{not json", { mode: 0o644 });
    chmodSync(dir, 0o755);
    expect(state.ensure()).toHaveLength(1);
    expect(mode(dir)).toBe(0o700);
    expect(() => state.credentials()).toThrow(CorruptCredentials);
    expect(() => state.credentials()).toThrow(`${state.path(FILES.credentials)} is not valid JSON`);
    expect(mode(state.path(FILES.credentials))).toBe(0o600);
    writeFileSync(state.path(FILES.credentials), "");
    expect(() => state.credentials()).toThrow(/is empty/);
    writeFileSync(state.path(FILES.credentials), "{}");
    expect(() => state.credentials()).toThrow(/does not hold agent credentials/);
    expect(new StateDir(join(dir, "none")).credentials()).toBeNull();
  });

  test("state files are durable: the temp file is flushed before its rename, the directory after it", () => {
    const state = new StateDir(join(tmp(), "state"));
    state.ensure();
    const order: string[] = [];
    const fds = new Map<number, string>();
    const open = spyOn(fs, "openSync").mockImplementation(((path: fs.PathLike, ...rest: unknown[]) => {
      const fd = (origOpen as (...a: unknown[]) => number)(path, ...rest);
      fds.set(fd, String(path));
      return fd;
    }) as typeof fs.openSync);
    const fsync = spyOn(fs, "fsyncSync").mockImplementation(((fd: number) => {
      order.push(`fsync ${fds.get(fd) === state.dir ? "dir" : fds.get(fd)?.includes(".tmp-") ? "tmp" : fds.get(fd)}`);
      origFsync(fd);
    }) as typeof fs.fsyncSync);
    const rename = spyOn(fs, "renameSync").mockImplementation(((from: fs.PathLike, to: fs.PathLike) => {
      order.push("rename");
      origRename(from, to);
    }) as typeof fs.renameSync);
    try {
      state.write(FILES.publicKey, "x\n");
    } finally {
      open.mockRestore();
      fsync.mockRestore();
      rename.mockRestore();
    }
    expect(order).toEqual(["fsync tmp", "rename", "fsync dir"]);
    expect(readFileSync(state.path(FILES.publicKey), "utf8")).toBe("x\n");
    expect(mode(state.path(FILES.publicKey))).toBe(0o600);
    expect(readdirSync(state.dir)).toEqual([FILES.publicKey]); // no temp file left
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
