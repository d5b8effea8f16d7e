import { rmSync } from "node:fs";
import { resolve } from "node:path";
import type { Subprocess } from "bun";
import { freshMachine, killAllAgents, managedArgs, spawnAgent, type AgentProcess } from "../agent/spawn.ts";
import { uniq } from "../machines/fixtures.ts";
import { readLines } from "./lines.ts";
import { dbEnv, spawnServer, type ServerProcess } from "./process.ts";
import { createTestDb, eventually, type TestDb } from "./stores.ts";
import { TestViewer } from "./viewer-client.ts";

/**
 * The scaffolding of the end-to-end tests (test/e2e): a real server process (`src/main.ts`) on
 * a fresh TestDb, restartable on the same data and port, logged in as the first admin; sites
 * with an enrollment key; managed agents enrolled against it; attended agents run with a
 * support code; viewers; and one cleanup for all of it.
 */
const ROOT = resolve(import.meta.dir, "..", "..");

/** Quick enrollment retries and reconnect backoff (100 ms doubling to 500 ms), so tests are fast. */
export const FAST_AGENT_FLAGS: readonly string[] = ["--enroll-retry-ms", "300", "--enroll-short-retry-ms", "200", "--reconnect-base-ms", "100", "--reconnect-cap-ms", "500"];

export interface Site {
  id: string;
  code: string;
  key: string;
}

export interface ApiAnswer {
  status: number;
  body: any;
}

export interface E2eOptions {
  /** The first admin's password (TETHER_ADMIN_PASSWORD). */
  adminPassword: string;
  /** More environment for the server process (TETHER_HEARTBEAT_MS, TETHER_SESSION_GRACE_MS…). */
  env?: Record<string, string>;
}

/**
 * One end-to-end environment: its database, its server process (`proc`, replaced by each
 * `start`), the admin's token, and everything to clean up (agents, viewers, temp dirs).
 */
export class E2e {
  proc: ServerProcess | null = null;
  /** The first admin's bearer token (renewed by every start: login sessions do not survive a new database, but do a restart). */
  token = "";
  /** The port of the first start; later starts listen on it again. */
  port = "0";
  /** When the last start said it was listening (Date.now()). */
  listeningAt = 0;
  readonly dirs: string[] = [];
  readonly viewers: TestViewer[] = [];

  private constructor(
    readonly db: TestDb,
    private readonly options: E2eOptions,
  ) {}

  /** A fresh database and a server on it (not started: see `start`). */
  static async create(flavor: "pglite" | "postgres", options: E2eOptions): Promise<E2e> {
    return new E2e(await createTestDb(flavor), options);
  }

  get url(): string {
    if (!this.proc) throw new Error("the server was not started");
    return this.proc.url;
  }

  /** Starts the server (again, on the same data and port) and logs in as the admin. */
  async start(): Promise<ServerProcess> {
    const s = await spawnServer("src/main.ts", { ...dbEnv(this.db.config), PORT: this.port, TETHER_ADMIN_PASSWORD: this.options.adminPassword, ...this.options.env });
    this.listeningAt = Date.now();
    this.port = new URL(s.url).port;
    this.proc = s;
    this.token = await this.login("admin", this.options.adminPassword);
    return s;
  }

  /** Kills the server (SIGKILL by default); resolves with its exit code. */
  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<number> {
    return await this.proc!.kill(signal);
  }

  async login(username: string, password: string): Promise<string> {
    const login = await fetch(`${this.url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username, password }) });
    if (login.status !== 200) throw new Error(`login ${username}: ${login.status} ${await login.text()}`);
    return ((await login.json()) as { token: string }).token;
  }

  /** A JSON API call, as the admin unless another token is given. */
  async api(method: string, path: string, body?: unknown, token = this.token): Promise<ApiAnswer> {
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(this.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  }

  /** A user of `role` named `username`, and a login session of theirs. */
  async user(role: "admin" | "technician" | "auditor" | "end_user", username: string): Promise<{ id: string; username: string; token: string }> {
    const password = `pw-${username}-long-enough`;
    const r = await this.api("POST", "/api/users", { username, role, password });
    if (r.status !== 201) throw new Error(`create ${username}: ${r.status} ${JSON.stringify(r.body)}`);
    return { id: r.body.id, username, token: await this.login(username, password) };
  }

  /** A site named after `run` (letters and digits of it as the code), with a fresh enrollment key. */
  async site(run: string): Promise<Site> {
    const created = await this.api("POST", "/api/sites", { site_code: run.toUpperCase().replace(/[^A-Z0-9]/g, ""), display_name: `${run} office`, company: "Acme" });
    if (created.status !== 201) throw new Error(`create site: ${created.status} ${JSON.stringify(created.body)}`);
    const rotated = await this.api("POST", `/api/sites/${created.body.id}/enrollment-key/rotate`);
    if (rotated.status !== 201) throw new Error(`rotate: ${rotated.status} ${JSON.stringify(rotated.body)}`);
    return { id: created.body.id, code: created.body.site_code, key: rotated.body.key };
  }

  /**
   * A managed agent of its own (fresh state dir and machine id) for `site`, spawned with
   * FAST_AGENT_FLAGS and `extra`. Not waited for: see `enroll` for one that is online.
   */
  managed(site: Site, extra: string[] = [], env: Record<string, string> = {}): ManagedAgent {
    const machine = freshMachine();
    this.dirs.push(machine.dir);
    const args = managedArgs(this.url, site, machine.stateDir, [...FAST_AGENT_FLAGS, ...extra]);
    const agentEnv = { TETHER_AGENT_MACHINE_ID_FILE: machine.machineIdFile, ...env };
    const m: ManagedAgent = {
      machine, args, env: agentEnv, id: "",
      agent: spawnAgent(args, agentEnv, machine.stateDir),
      respawn: () => (m.agent = spawnAgent(args, agentEnv, machine.stateDir)),
    };
    return m;
  }

  /** A managed agent enrolled and online, in its log and in the API. */
  async enroll(site: Site, extra: string[] = [], env: Record<string, string> = {}): Promise<ManagedAgent> {
    const m = this.managed(site, extra, env);
    m.id = (await m.agent.waitFor((e) => e.event === "connect.online", 15_000, "online")).machine_id;
    await this.waitMachine(m.id, "online", 5_000);
    return m;
  }

  /** Waits until a machine shows `status` in the API. */
  async waitMachine(id: string, status: "online" | "offline", timeoutMs: number): Promise<void> {
    await eventually(async () => (await this.api("GET", `/api/machines/${id}`)).body?.status === status, timeoutMs, `machine ${id} ${status}`);
  }

  /** Waits until the session's row matches; returns it. */
  async waitSession(id: string, pred: (s: any) => boolean, timeoutMs: number, what: string): Promise<any> {
    let last: any = null;
    try {
      await eventually(async () => pred((last = (await this.api("GET", `/api/sessions/${id}`)).body)), timeoutMs, what);
    } catch (e) {
      throw new Error(`${(e as Error).message}; last seen: ${JSON.stringify(last)}`);
    }
    return last;
  }

  /** The session's events (the first 1000). */
  async events(id: string): Promise<any[]> {
    return (await this.api("GET", `/api/sessions/${id}/events?limit=1000`)).body?.events ?? [];
  }

  /** A viewer token minted (as `token`'s user) and a viewer joined with it. */
  async viewer(sessionId: string, access: "control" | "view", token = this.token): Promise<TestViewer> {
    const minted = await this.api("POST", `/api/sessions/${sessionId}/viewer-token`, { access }, token);
    if (minted.status !== 201) throw new Error(`viewer token: ${minted.status} ${JSON.stringify(minted.body)}`);
    const v = new TestViewer(this.url, sessionId, minted.body.token);
    this.viewers.push(v);
    await v.open();
    await v.waitFor((m) => m.t === "joined", 5_000, "joined");
    return v;
  }

  /** The status an upgrade request to /ws/viewer gets before any socket exists (101 when admitted). */
  async viewerUpgradeStatus(sessionId: string, viewerToken: string): Promise<number> {
    const res = await fetch(`${this.url}/ws/viewer?session=${sessionId}&token=${encodeURIComponent(viewerToken)}`, {
      headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64") },
    });
    await res.body?.cancel();
    return res.status;
  }

  /** An attended agent (`--code`), as the person at the machine would run it. */
  attended(code: string, extra: string[] = []): AttendedAgent {
    return spawnAttended(this.url, code, extra);
  }

  /** Viewers closed, every agent killed, the server killed, the database and temp dirs gone. */
  async cleanup(): Promise<void> {
    for (const v of this.viewers) v.close();
    await killAllAgents();
    await killAllAttended();
    if (this.proc?.proc.exitCode === null) await this.proc.kill("SIGKILL");
    await this.db.destroy();
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** A managed agent: its machine (state dir, machine-id file), arguments, and process. */
export interface ManagedAgent {
  machine: { stateDir: string; machineIdFile: string; dir: string };
  args: string[];
  env: Record<string, string>;
  /** The machine id, once online. */
  id: string;
  agent: AgentProcess;
  /** Starts the agent again with the same state (after it was killed). */
  respawn(): AgentProcess;
}

/** A unique run name (for site codes, tags, file names). */
export const runName = (prefix: string) => uniq(prefix).toLowerCase();

// ---- attended agents ---------------------------------------------------------------------------

/** An attended agent process: what the person reads on stdout, its log on stderr, its stdin. */
export interface AttendedAgent {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  /** Lines the person was shown (stdout). */
  out: string[];
  /** Log lines (stderr). */
  err: string[];
  waitOut(needle: string, timeoutMs?: number): Promise<string>;
  /** Resolves with the exit code; fails if it is still running after `timeoutMs`. */
  exit(timeoutMs?: number): Promise<number>;
  /** Writes a line to its stdin (the person typing). */
  type(line: string): Promise<void>;
}

const attendedProcs = new Set<Subprocess>();

async function killAllAttended(): Promise<void> {
  for (const p of attendedProcs) {
    p.kill("SIGKILL");
    await p.exited;
  }
  attendedProcs.clear();
}

export function spawnAttended(server: string, code: string, extra: string[] = []): AttendedAgent {
  const proc = Bun.spawn([process.execPath, resolve(ROOT, "src/agent/main.ts"), "--server", server, "--code", code, ...extra], {
    cwd: ROOT,
    env: { ...process.env, TETHER_AGENT_LOG_LEVEL: "debug", SHELL: "/bin/sh" },
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  attendedProcs.add(proc);
  void proc.exited.then(() => attendedProcs.delete(proc));
  const out: string[] = [];
  const err: string[] = [];
  readLines([proc.stdout], (l) => out.push(l));
  readLines([proc.stderr], (l) => err.push(l));
  const show = () => `stdout:\n${out.join("\n")}\nstderr:\n${err.slice(-30).join("\n")}`;
  return {
    proc,
    out,
    err,
    async waitOut(needle, ms = 10_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const line = out.find((l) => l.includes(needle));
        if (line !== undefined) return line;
        if (proc.exitCode !== null) throw new Error(`the attended agent exited (${proc.exitCode}) before "${needle}":\n${show()}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for "${needle}":\n${show()}`);
        await Bun.sleep(20);
      }
    },
    async exit(ms = 10_000) {
      const code = await Promise.race([proc.exited, Bun.sleep(ms).then(() => "timeout" as const)]);
      if (code === "timeout") throw new Error(`the attended agent is still running after ${ms} ms:\n${show()}`);
      return code;
    },
    async type(line) {
      proc.stdin.write(line + "\n");
      await proc.stdin.flush();
    },
  };
}

/**
 * Waits for a terminal's first output (the shell's prompt) before anything is typed: input that
 * arrives earlier is echoed before the prompt, which then lands in front of the command's output.
 */
export async function shellReady(v: TestViewer, channel: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (v.text(channel).length === 0) {
    if (Date.now() > deadline) throw new Error(`no output from the shell on channel ${channel} within ${timeoutMs} ms`);
    await Bun.sleep(10);
  }
}

/** The first log line at index ≥ `from` that matches: only what happened after a given moment. */
export function nextLog(agent: AgentProcess, from: number, pred: (e: any) => boolean, timeoutMs: number, what: string): Promise<any> {
  return agent.waitFor((e) => agent.logs.indexOf(e) >= from && pred(e), timeoutMs, what);
}
