import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pkg from "../../package.json" with { type: "json" };
import { parseConfig } from "../../src/agent/config.ts";
import { AGENT_VERSION } from "../../src/agent/version.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { siteWithKey } from "../machines/fixtures.ts";

/**
 * The agent install path (M7 req. 5) for real: the rotate response's command is run by `sh`
 * against a temporary root, fetching the script and binary from a running server. `sudo` and
 * `systemctl` are shims on PATH (the second records its arguments), so no real systemd is needed.
 */
const dir = mkdtempSync(join(tmpdir(), "tether-install-test-"));
const binaryPath = join(dir, "tether-agent");
// Stands in for the ~100 MB compiled agent: what matters here is that the bytes arrive intact.
const BINARY = `#!/bin/sh\necho "fake tether-agent $*"\n# ${crypto.randomUUID()}\n`;
const sha256 = (data: string | Uint8Array) => new Bun.CryptoHasher("sha256").update(data).digest("hex");

const shims = join(dir, "bin");
const systemctlLog = join(dir, "systemctl.log");
function shim(name: string, body: string) {
  mkdirSync(shims, { recursive: true });
  writeFileSync(join(shims, name), `#!/bin/sh\n${body}\n`);
  chmodSync(join(shims, name), 0o755);
}

/** Runs a shell command line with the shims first on PATH; a fresh install root unless given one. */
async function runSh(commandLine: string, stdin?: string, root = mkdtempSync(join(dir, "root-"))) {
  const proc = Bun.spawn(["sh", "-c", commandLine], {
    env: { PATH: `${shims}:/usr/bin:/bin`, TETHER_INSTALL_ROOT: root, HOME: dir },
    stdin: stdin === undefined ? "ignore" : new TextEncoder().encode(stdin),
    stdout: "pipe",
    stderr: "pipe",
  });
  const [code, out, err] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  return { code, out, err, root };
}

const mode = (path: string) => statSync(path).mode & 0o777;

beforeAll(() => {
  shim("sudo", 'exec "$@"');
  shim("systemctl", `echo "$*" >> '${systemctlLog}'`);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("agent install", () => {
  let app: TestApp;
  let site: Awaited<ReturnType<typeof siteWithKey>>;
  let rotated: { key: string; install_command: string };

  beforeAll(async () => {
    writeFileSync(binaryPath, BINARY);
    app = await startTestApp("pglite", { env: { TETHER_AGENT_BINARY: binaryPath } });
    site = await siteWithKey(app);
    const r = await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken });
    expect(r.status).toBe(201);
    rotated = r.body;
  }, 60_000);
  afterAll(async () => app?.close());

  test("GET /api/version is public and names the binary's checksum", async () => {
    const r = await app.call("GET", "/api/version");
    expect(r.status).toBe(200);
    expect(r.body).toEqual({
      server_version: pkg.version,
      agent_version: AGENT_VERSION,
      agent_binary: { sha256: sha256(BINARY), size_bytes: BINARY.length, platform: `${process.platform}-${process.arch}` },
    });
  });

  test("GET /api/agent/binary is public and serves exactly those bytes", async () => {
    const res = await fetch(`${app.url}/api/agent/binary`);
    expect(res.status).toBe(200);
    expect(res.headers.get("x-tether-sha256")).toBe(sha256(BINARY));
    expect(sha256(new Uint8Array(await res.arrayBuffer()))).toBe(sha256(BINARY));
  });

  test("the rotate response's command installs the agent, its root-only config and the unit", async () => {
    expect(rotated.install_command).toContain(rotated.key);
    const { code, out, err, root } = await runSh(rotated.install_command);
    expect({ code, err }).toEqual({ code: 0, err: "" });
    expect(out).toContain("enabled tether-agent.service (not started)");

    const bin = join(root, "usr/local/bin/tether-agent");
    expect(readFileSync(bin, "utf8")).toBe(BINARY);
    expect(mode(bin)).toBe(0o755);

    const envFile = join(root, "etc/tether/agent.env");
    expect(mode(join(root, "etc/tether"))).toBe(0o700);
    expect(mode(envFile)).toBe(0o600);
    // The agent reads that file's variables (the unit's EnvironmentFile) as its configuration.
    const env = Object.fromEntries(readFileSync(envFile, "utf8").trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    const parsed = parseConfig([], env);
    expect(parsed.kind).toBe("run");
    if (parsed.kind !== "run") return;
    expect(parsed.config).toMatchObject({ server: app.url, siteCode: site.code, enrollmentKey: rotated.key, stateDir: "/var/lib/tether-agent" });

    const unit = readFileSync(join(root, "etc/systemd/system/tether-agent.service"), "utf8");
    expect(unit).toContain("ExecStart=/usr/local/bin/tether-agent\n");
    expect(unit).toContain("EnvironmentFile=/etc/tether/agent.env\n");
    expect(unit).toContain("StateDirectory=tether-agent\n");
    expect(unit).toContain("Restart=always\n");
    expect(unit).toContain("RestartPreventExitStatus=2 6\n"); // bad usage; a clone without an enrollment key
    expect(unit).not.toContain("cek_"); // the key lives in the root-only file, not the world-readable unit
    expect(mode(join(root, "etc/systemd/system/tether-agent.service"))).toBe(0o644);
    expect(readFileSync(systemctlLog, "utf8").trim().split("\n").at(-1)).toBe(`--root=${root} enable tether-agent.service`);
  });

  test("a binary that does not match the checksum is refused and nothing is installed", async () => {
    const script = await (await fetch(`${app.url}/api/agent/install.sh`)).text();
    const tampered = script.replace(sha256(BINARY), "0".repeat(64));
    expect(tampered).not.toBe(script);
    const { code, err, root } = await runSh(`sh -s -- --site-code '${site.code}' --enrollment-key '${rotated.key}'`, tampered);
    expect(code).toBe(1);
    expect(err).toContain("checksum mismatch");
    expect(existsSync(join(root, "usr/local/bin/tether-agent"))).toBe(false);
    expect(existsSync(join(root, "etc/tether/agent.env"))).toBe(false);
  });

  test("arguments that are not a site code and key are refused before anything is written", async () => {
    const script = await (await fetch(`${app.url}/api/agent/install.sh`)).text();
    for (const [args, error] of [
      [`--site-code '${site.code}' --enrollment-key 'cek_x; touch /tmp/pwned'`, "--enrollment-key: expected cek_"],
      [`--site-code 'a b' --enrollment-key '${rotated.key}'`, "--site-code: letters"],
      [`--site-code '${site.code}'`, "--enrollment-key: expected cek_"],
      [`--site-code '${site.code}' --enrollment-key '${rotated.key}' --extra`, "unknown argument: --extra"],
      [`--site-code '${site.code}' --enrollment-key '${rotated.key}' --server 'http://x/$(id)'`, "--server: expected"],
    ]) {
      const { code, err, root } = await runSh(`sh -s -- ${args}`, script);
      expect(code).toBe(1);
      expect(err).toStartWith(`tether install: ${error}`);
      expect(existsSync(join(root, "usr"))).toBe(false);
    }
  });

  test("a value with a line break is refused, whatever the option: it would add lines to agent.env", async () => {
    const script = await (await fetch(`${app.url}/api/agent/install.sh`)).text();
    const evil = (value: string, eol = "\\n") => `"$(printf '${value}${eol}LD_PRELOAD=/tmp/evil.so')"`;
    for (const [args, error] of [
      // The reviewer's case: each line alone matches the site code's pattern.
      [`--site-code ${evil("abc")} --enrollment-key '${rotated.key}'`, "--site-code: must not contain a line break"],
      [`--site-code ${evil("abc", "\\r")} --enrollment-key '${rotated.key}'`, "--site-code: must not contain a line break"],
      [`--site-code '${site.code}' --enrollment-key ${evil(rotated.key)}`, "--enrollment-key: must not contain a line break"],
      [`--site-code '${site.code}' --enrollment-key '${rotated.key}' --server ${evil(app.url)}`, "--server: must not contain a line break"],
      [`--site-code 'abc\n' --enrollment-key '${rotated.key}'`, "--site-code: must not contain a line break"], // a trailing one, quoted literally
    ]) {
      const { code, err, root } = await runSh(`sh -s -- ${args}`, script);
      expect({ args, code }).toEqual({ args, code: 1 });
      expect(err).toStartWith(`tether install: ${error}`);
      expect(existsSync(join(root, "usr"))).toBe(false);
      expect(existsSync(join(root, "etc/tether/agent.env"))).toBe(false);
    }
  });

  test("re-run on an enrolled machine (an upgrade): no enrollment key needed, and a given one is not written", async () => {
    const script = await (await fetch(`${app.url}/api/agent/install.sh`)).text();
    // First install, then the agent's enrollment (stood in for by its credentials file).
    const first = await runSh(rotated.install_command);
    expect(first.code).toBe(0);
    const root = first.root;
    const envFile = join(root, "etc/tether/agent.env");
    expect(readFileSync(envFile, "utf8")).toContain(rotated.key);
    const stateDir = join(root, "var/lib/tether-agent");
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    writeFileSync(join(stateDir, "credentials.json"), "{\"machine_id\":\"…\"}\n", { mode: 0o600 });
    const envOf = () => Object.fromEntries(readFileSync(envFile, "utf8").trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));

    // The same command again: the key is accepted but not written; the one from the first install goes.
    const again = await runSh(rotated.install_command, undefined, root);
    expect({ code: again.code, err: again.err }).toEqual({ code: 0, err: "" });
    expect(again.out).toContain("already enrolled");
    expect(readFileSync(envFile, "utf8")).not.toContain("cek_");
    expect(envOf()).toEqual({ TETHER_AGENT_SERVER: app.url, TETHER_AGENT_SITE_CODE: site.code, TETHER_AGENT_STATE_DIR: "/var/lib/tether-agent" });
    expect(mode(envFile)).toBe(0o600);

    // No arguments at all: an upgrade still installs the binary and the unit.
    rmSync(join(root, "usr/local/bin/tether-agent"));
    const bare = await runSh("sh -s --", script, root);
    expect({ code: bare.code, err: bare.err }).toEqual({ code: 0, err: "" });
    expect(readFileSync(join(root, "usr/local/bin/tether-agent"), "utf8")).toBe(BINARY);
    expect(envOf()).toEqual({ TETHER_AGENT_SERVER: app.url, TETHER_AGENT_STATE_DIR: "/var/lib/tether-agent" });
    const parsed = parseConfig([], envOf());
    expect(parsed.kind === "run" && parsed.config.enrollmentKey).toBeUndefined();

    // Still validated when given, and still refused with a line break.
    const bad = await runSh(`sh -s -- --enrollment-key 'cek_nope'`, script, root);
    expect(bad.code).toBe(1);
    expect(bad.err).toStartWith("tether install: --enrollment-key: expected cek_");
    const evil = await runSh(`sh -s -- --site-code "$(printf 'abc\\nLD_PRELOAD=/tmp/evil.so')"`, script, root);
    expect(evil.code).toBe(1);
    expect(readFileSync(envFile, "utf8")).not.toContain("LD_PRELOAD");
  });

  test("without a built binary: /api/version says so, the binary is a 404, and the script stops with a message", async () => {
    renameSync(binaryPath, `${binaryPath}.away`);
    try {
      expect((await app.call("GET", "/api/version")).body.agent_binary).toBeNull();
      const bin = await app.call("GET", "/api/agent/binary");
      expect(bin.status).toBe(404);
      expect(bin.body.error_code).toBe("AGENT_BINARY_UNAVAILABLE");
      const { code, err } = await runSh(rotated.install_command);
      expect(code).toBe(1);
      expect(err).toContain("npm run build:agent");
    } finally {
      renameSync(`${binaryPath}.away`, binaryPath);
    }
  });
});

/**
 * The whole path with the real thing: `bun build --compile` the agent (as `npm run build:agent`
 * does), install it with the rotate response's command, then start the installed executable
 * the way its unit would (the variables of its EnvironmentFile): it enrolls and comes online.
 */
describe("agent install, with the compiled agent", () => {
  const work = mkdtempSync(join(tmpdir(), "tether-install-real-"));
  const compiled = join(work, "tether-agent");
  let app: TestApp;
  let agent: ReturnType<typeof Bun.spawn> | null = null;

  beforeAll(async () => {
    const build = Bun.spawnSync([process.execPath, "build", "--compile", "src/agent/main.ts", "--outfile", compiled], { cwd: join(import.meta.dir, "../.."), stderr: "pipe" });
    if (build.exitCode !== 0) throw new Error(`agent build failed: ${build.stderr.toString()}`);
    app = await startTestApp("pglite", { env: { TETHER_AGENT_BINARY: compiled, TETHER_HEARTBEAT_MS: "500" } });
  }, 60_000);
  afterAll(async () => {
    agent?.kill("SIGKILL");
    await agent?.exited;
    await app?.close();
    rmSync(work, { recursive: true, force: true });
  });

  test("installed by the script, the executable enrolls and goes online", async () => {
    const site = await siteWithKey(app);
    const rotated = (await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken })).body;
    const { code, err, root } = await runSh(rotated.install_command);
    expect({ code, err }).toEqual({ code: 0, err: "" });
    const installed = join(root, "usr/local/bin/tether-agent");
    expect(sha256(readFileSync(installed))).toBe((await app.call("GET", "/api/version")).body.agent_binary.sha256);

    const env = Object.fromEntries(readFileSync(join(root, "etc/tether/agent.env"), "utf8").trim().split("\n").map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]));
    const machineIdFile = join(work, "machine-id");
    writeFileSync(machineIdFile, `${crypto.randomUUID().replaceAll("-", "")}\n`);
    agent = Bun.spawn([installed], {
      // StateDirectory= would create /var/lib/tether-agent; here it lives under the install root.
      env: { ...env, TETHER_AGENT_STATE_DIR: join(root, env.TETHER_AGENT_STATE_DIR!), TETHER_AGENT_MACHINE_ID_FILE: machineIdFile, TETHER_AGENT_PRODUCT_UUID_FILE: "/nonexistent" },
      stdout: "ignore",
      stderr: "ignore",
    });
    const deadline = Date.now() + 20_000;
    let online: any = null;
    while (!online && Date.now() < deadline) {
      const r = await app.call("GET", `/api/machines?site_id=${site.id}&status=online`, { token: app.adminToken });
      online = r.body.machines?.[0] ?? null;
      if (!online) await Bun.sleep(100);
    }
    expect(online).not.toBeNull();
    expect(online.agent_version).toBe(AGENT_VERSION);
    agent.kill("SIGTERM");
    expect(await agent.exited).toBe(0);
    agent = null;
  }, 60_000);
});
