import { afterEach, describe, expect, test } from "bun:test";
import type { Server, ServerWebSocket, Subprocess } from "bun";
import { resolve } from "node:path";
import { Packr } from "msgpackr";
import { Heartbeat, decode } from "../../src/protocol/agent.ts";
import { STDOUT, channelOf, isDataFrame, payloadOf } from "../../src/protocol/frames.ts";
import { AgentToServer, type ServerToAgent } from "../../src/protocol/relay.ts";
import { SUPPORT_CLOSE, SupportHello } from "../../src/protocol/support.ts";
import { ConfigError, parseConfig, supportSocketUrl } from "../../src/agent/config.ts";
import { readLines } from "../helpers/lines.ts";

/**
 * Attended mode (`--code`) as a real process against a scripted /ws/support server: the
 * person's text on stdout, exit codes, consent, the session running through the socket.
 */
const ROOT = resolve(import.meta.dir, "..", "..");
const SESSION = "0190a3c4-0000-7000-8000-0000000000a1";
const packr = new Packr({ useRecords: false });
const pack = (m: ServerToAgent | Record<string, unknown>) => packr.pack(m);

interface Person {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  out: string[];
  err: string[];
  waitOut(needle: string, ms?: number): Promise<void>;
  exit(ms?: number): Promise<number>;
}

const procs = new Set<Subprocess>();
let server: Server<any> | null = null;
afterEach(async () => {
  for (const p of procs) {
    p.kill("SIGKILL");
    await p.exited;
  }
  procs.clear();
  server?.stop(true);
  server = null;
});

function attended(args: string[]): Person {
  const proc = Bun.spawn([process.execPath, resolve(ROOT, "src/agent/main.ts"), ...args], {
    cwd: ROOT,
    env: { ...process.env, TETHER_AGENT_LOG_LEVEL: "debug" },
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
  });
  procs.add(proc);
  const out: string[] = [];
  const err: string[] = [];
  readLines([proc.stdout], (l) => out.push(l));
  readLines([proc.stderr], (l) => err.push(l));
  return {
    proc,
    out,
    err,
    async waitOut(needle, ms = 10_000) {
      const deadline = Date.now() + ms;
      // The prompt has no newline: look at lines and at what is still unterminated via `out`.
      while (!out.some((l) => l.includes(needle))) {
        if (proc.exitCode !== null) throw new Error(`agent exited (${proc.exitCode}) before "${needle}":\n${out.join("\n")}\n${err.join("\n")}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for "${needle}":\n${out.join("\n")}\n${err.join("\n")}`);
        await Bun.sleep(20);
      }
    },
    async exit(ms = 10_000) {
      const code = await Promise.race([proc.exited, Bun.sleep(ms).then(() => "timeout" as const)]);
      if (code === "timeout") throw new Error(`agent still running after ${ms} ms:\n${out.join("\n")}\n${err.join("\n")}`);
      return code;
    },
  };
}

/** What the fake server saw of one connection. */
interface Seen {
  hello: ReturnType<typeof SupportHello.parse> | null;
  messages: AgentToServer[];
  frames: Uint8Array[];
  heartbeats: number;
  closed: number | null;
  ws: ServerWebSocket<any> | null;
}

/** A /ws/support stub: `onHello` decides what happens after the hello; `onMessage` sees the rest. */
function supportServer(script: { onHello(ws: ServerWebSocket<any>, seen: Seen): void; onMessage?(ws: ServerWebSocket<any>, m: AgentToServer, seen: Seen): void }) {
  const conns: Seen[] = [];
  server = Bun.serve<{ seen: Seen }>({
    port: 0,
    hostname: "127.0.0.1",
    fetch(req, srv) {
      if (new URL(req.url).pathname === "/ws/support" && srv.upgrade(req, { data: { seen: null as unknown as Seen } })) return undefined;
      return new Response("no", { status: 404 });
    },
    websocket: {
      open(ws) {
        const seen: Seen = { hello: null, messages: [], frames: [], heartbeats: 0, closed: null, ws };
        conns.push(seen);
        ws.data.seen = seen;
      },
      message(ws, raw) {
        const frame = new Uint8Array(raw as Buffer);
        const seen = ws.data.seen;
        if (!seen.hello) {
          seen.hello = decode(SupportHello, frame);
          script.onHello(ws, seen);
          return;
        }
        if (isDataFrame(frame)) {
          seen.frames.push(frame);
          return;
        }
        if (decode(Heartbeat, frame)) {
          seen.heartbeats++;
          return;
        }
        const m = decode(AgentToServer, frame);
        if (!m) throw new Error("the agent sent something outside the contract");
        seen.messages.push(m);
        script.onMessage?.(ws, m, seen);
      },
      close(ws, code) {
        ws.data.seen.closed = code;
      },
    },
  });
  return { url: `http://127.0.0.1:${server.port}`, conns };
}

const welcome = (ws: ServerWebSocket<any>) => ws.send(pack({ t: "welcome", session: SESSION, technician: "Alice Tech", heartbeat_ms: 100 }));
const sessionStart = (ws: ServerWebSocket<any>) =>
  ws.send(pack({ t: "session.start", session: SESSION, kind: "attended", technician: "Alice Tech", consent: "required", resume: false }));

async function until(pred: () => boolean, ms: number, what: string) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

describe("attended mode: arguments", () => {
  test("--code selects attended mode; code, consent and grace parsed; mixing in managed flags is refused", () => {
    const p = parseConfig(["--server", "https://t.example/base/", "--code", "123 456", "--consent", "allow", "--session-grace-ms", "5000"], {});
    expect(p).toEqual({ kind: "attended", config: { server: "https://t.example/base", code: "123456", consent: "allow", sessionGraceMs: 5_000, logLevel: "warn" } });
    const d = parseConfig(["--server", "http://x", "--code", "42"], {});
    expect(d.kind === "attended" && d.config.consent).toBe("ask");
    expect(supportSocketUrl("https://t.example/base")).toBe("wss://t.example/base/ws/support");
    expect(() => parseConfig(["--code", "1"], {})).toThrow(ConfigError); // no server
    expect(() => parseConfig(["--server", "http://x", "--code", "1", "--consent", "maybe"], {})).toThrow(ConfigError);
    expect(() => parseConfig(["--server", "http://x", "--code", "12;rm"], {})).toThrow(ConfigError);
    expect(() => parseConfig(["--server", "http://x", "--code", "1", "--state-dir", "/x"], {})).toThrow(ConfigError);
    expect(() => parseConfig(["--server", "http://x", "--state-dir", "/x", "--consent", "allow"], {})).toThrow(ConfigError);
  });

  test("managed: --unattended-consent (default deny, env fallback) and --session-grace-ms", () => {
    const base = ["--server", "http://x", "--state-dir", "/x"];
    const m = parseConfig(base, {});
    expect(m.kind === "run" && [m.config.unattendedConsent, m.config.sessionGraceMs]).toEqual(["deny", 60_000]);
    const e = parseConfig(base, { TETHER_AGENT_UNATTENDED_CONSENT: "allow", TETHER_AGENT_SESSION_GRACE_MS: "1500" });
    expect(e.kind === "run" && [e.config.unattendedConsent, e.config.sessionGraceMs]).toEqual(["allow", 1_500]);
    expect(() => parseConfig([...base, "--unattended-consent", "yes"], {})).toThrow(ConfigError);
  });

  test("a bad --consent exits 2 with the usage", async () => {
    const a = attended(["--server", "http://127.0.0.1:1", "--code", "1", "--consent", "sure"]);
    expect(await a.exit()).toBe(2);
    expect(a.err.join("\n")).toContain("--consent must be ask, allow or deny");
  });
});

describe("attended mode against a stub /ws/support", () => {
  test("bad code (4200): a clear message, exit 4; the hello carried code, hostname, user, protocol", async () => {
    const s = supportServer({ onHello: (ws) => ws.close(SUPPORT_CLOSE.BAD_CODE, "bad code") });
    const a = attended(["--server", s.url, "--code", "654-321"]);
    expect(await a.exit()).toBe(4);
    expect(a.out.join("\n")).toContain("That support code was not accepted");
    expect(s.conns).toHaveLength(1); // a refused code is not retried
    expect(s.conns[0]!.hello).toMatchObject({ t: "hello", code: "654321", protocol: 1 });
    expect(s.conns[0]!.hello!.hostname.length).toBeGreaterThan(0);
    expect(s.conns[0]!.hello!.user.length).toBeGreaterThan(0);
  });

  test("locked out (4201): a message about waiting, exit 4", async () => {
    const s = supportServer({ onHello: (ws) => ws.close(SUPPORT_CLOSE.LOCKED_OUT, "locked out") });
    const a = attended(["--server", s.url, "--code", "111111"]);
    expect(await a.exit()).toBe(4);
    expect(a.out.join("\n")).toContain("15 minutes");
  });

  test("the code's session has another agent connected (4203) before any welcome: a few quick tries, then a clear message, exit 4", async () => {
    const s = supportServer({ onHello: (ws) => ws.close(SUPPORT_CLOSE.AGENT_CONNECTED, "agent still connected") });
    const a = attended(["--server", s.url, "--code", "111111"]);
    expect(await a.exit(15_000)).toBe(4);
    expect(s.conns).toHaveLength(3);
    expect(a.out.join("\n")).toContain("Another connection is using this support code");
    expect(a.out.join("\n")).not.toContain("Could not connect");
  });

  test("no server: a few quick tries, then exit 5", async () => {
    const probe = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Response() });
    const port = probe.port;
    probe.stop(true);
    const a = attended(["--server", `http://127.0.0.1:${port}`, "--code", "111111"]);
    expect(await a.exit(15_000)).toBe(5);
    expect(a.out.join("\n")).toContain("Could not connect");
  });

  test("happy path: welcome → 'wants to connect', consent granted (--consent allow), a command and a terminal run, notice shown, heartbeats; session.stop → exit 0", async () => {
    const s = supportServer({
      onHello: (ws) => {
        welcome(ws);
        sessionStart(ws);
      },
      onMessage: (ws, m) => {
        if (m.t === "consent" && m.granted) {
          ws.send(pack({ t: "notice", session: SESSION, text: "Bob \u001b[31mjoined\u001b[0m (view only)" }));
          ws.send(pack({ t: "ch.open", session: SESSION, channel: 7, type: "cmd", argv: ["sh", "-c", "echo from-cmd"] }));
        }
      },
    });
    const a = attended(["--server", s.url, "--code", "123456", "--consent", "allow"]);
    await a.waitOut("Technician Alice Tech wants to connect.");
    await until(() => s.conns[0]?.messages.some((m) => m.t === "consent") ?? false, 10_000, "consent");
    const conn = s.conns[0]!;
    expect(conn.messages.find((m) => m.t === "consent")).toEqual({ t: "consent", session: SESSION, granted: true });
    await a.waitOut("Bob joined (view only)");
    expect(a.out.join("\n")).not.toContain("\u001b"); // the server's text cannot drive the person's terminal
    await until(() => conn.messages.some((m) => m.t === "ch.closed" && m.channel === 7), 10_000, "command done");
    expect(conn.messages.find((m) => m.t === "ch.closed" && m.channel === 7)).toMatchObject({ reason: "exit", exit_code: 0 });
    const out = Buffer.concat(conn.frames.filter((f) => channelOf(f) === 7).map((f) => payloadOf(f))).toString();
    expect(out).toBe(String.fromCharCode(STDOUT) + "from-cmd\n");

    conn.ws!.send(pack({ t: "ch.open", session: SESSION, channel: 8, type: "term", cols: 80, rows: 24 }));
    await until(() => conn.messages.some((m) => m.t === "ch.opened" && m.channel === 8), 10_000, "terminal opened");
    const input = new Uint8Array([0, 0, 0, 0, 8, ...new TextEncoder().encode('echo hel""lo\n')]);
    conn.ws!.send(input);
    const termText = () => Buffer.concat(conn.frames.filter((f) => channelOf(f) === 8).map((f) => payloadOf(f))).toString();
    await until(() => /hello\r?\n/.test(termText()), 10_000, "hello from the terminal");
    // Heartbeats every 100 ms from the welcome; on a fast machine all of the above can take less.
    await until(() => conn.heartbeats >= 1, 3_000, "a heartbeat");

    conn.ws!.send(pack({ t: "session.stop", session: SESSION, reason: "technician" }));
    expect(await a.exit()).toBe(0);
    expect(a.out.join("\n")).toContain("The session has ended (the technician ended it).");
    expect(conn.messages.find((m) => m.t === "ch.closed" && m.channel === 8)).toMatchObject({ reason: "session_ended" });
    await until(() => conn.closed !== null, 3_000, "close seen");
    expect(conn.closed).toBe(1000);
  });

  test("--consent deny: consent {granted: false}; the server ends it (consent_denied) → exit 0", async () => {
    const s = supportServer({
      onHello: (ws) => {
        welcome(ws);
        sessionStart(ws);
      },
      onMessage: (ws, m) => {
        if (m.t === "consent") ws.send(pack({ t: "session.stop", session: SESSION, reason: "consent_denied" }));
      },
    });
    const a = attended(["--server", s.url, "--code", "123456", "--consent", "deny"]);
    expect(await a.exit()).toBe(0);
    expect(s.conns[0]!.messages).toEqual([{ t: "consent", session: SESSION, granted: false }]);
    expect(a.out.join("\n")).toContain("you declined");
  });

  test("--consent ask: the person answers on stdin; y grants", async () => {
    const s = supportServer({
      onHello: (ws) => {
        welcome(ws);
        sessionStart(ws);
      },
      onMessage: (ws, m) => {
        if (m.t === "consent") ws.send(pack({ t: "session.stop", session: SESSION, reason: "technician" }));
      },
    });
    const a = attended(["--server", s.url, "--code", "123456"]);
    await a.waitOut("Technician Alice Tech wants to connect.");
    a.proc.stdin.write("y\n"); // the prompt ends without a newline; the answer is read when it is asked
    await a.proc.stdin.flush();
    expect(await a.exit()).toBe(0);
    expect(s.conns[0]!.messages).toEqual([{ t: "consent", session: SESSION, granted: true }]);
    expect(a.out.join("\n")).toContain("Allow? [y/N] Allowed.");
  });

  test("on a real terminal: the prompt, y, chat both ways", async () => {
    const s = supportServer({
      onHello: (ws) => {
        welcome(ws);
        sessionStart(ws);
      },
      onMessage: (ws, m) => {
        if (m.t === "consent") ws.send(pack({ t: "chat", session: SESSION, from: "Alice Tech", text: "hello from the technician" }));
        if (m.t === "chat") ws.send(pack({ t: "session.stop", session: SESSION, reason: "technician" }));
      },
    });
    let screen = "";
    const proc = Bun.spawn([process.execPath, resolve(ROOT, "src/agent/main.ts"), "--server", s.url, "--code", "123456"], {
      cwd: ROOT,
      env: { ...process.env, TETHER_AGENT_LOG_LEVEL: "error" },
      terminal: { cols: 120, rows: 30, data: (_t, d) => void (screen += new TextDecoder().decode(d)) },
    });
    procs.add(proc);
    await until(() => screen.includes("Allow? [y/N]"), 10_000, "the prompt");
    proc.terminal!.write("y\r");
    await until(() => screen.includes("hello from the technician"), 10_000, "the technician's chat");
    expect(screen).toContain("Type a message and press Enter to chat.");
    proc.terminal!.write("thanks, go ahead\r");
    const code = await Promise.race([proc.exited, Bun.sleep(10_000).then(() => "timeout" as const)]);
    proc.terminal?.close();
    expect(code).toBe(0);
    expect(s.conns[0]!.messages).toEqual([
      { t: "consent", session: SESSION, granted: true },
      { t: "chat", session: SESSION, text: "thanks, go ahead" },
    ]);
  });

  test("--consent ask with stdin closed: declined", async () => {
    const s = supportServer({
      onHello: (ws) => {
        welcome(ws);
        sessionStart(ws);
      },
      onMessage: (ws, m) => {
        if (m.t === "consent") ws.send(pack({ t: "session.stop", session: SESSION, reason: "consent_denied" }));
      },
    });
    const a = attended(["--server", s.url, "--code", "123456"]);
    a.proc.stdin.end();
    expect(await a.exit()).toBe(0);
    expect(s.conns[0]!.messages).toEqual([{ t: "consent", session: SESSION, granted: false }]);
  });

  test("SIGTERM: close 1000, exit 0, the shell it ran is gone", async () => {
    const s = supportServer({
      onHello: (ws) => {
        welcome(ws);
        sessionStart(ws);
      },
      onMessage: (ws, m) => {
        if (m.t === "consent") ws.send(pack({ t: "ch.open", session: SESSION, channel: 9, type: "cmd", argv: ["sleep", "60"] }));
      },
    });
    const a = attended(["--server", s.url, "--code", "123456", "--consent", "allow"]);
    await until(() => s.conns[0]?.messages.some((m) => m.t === "ch.opened") ?? false, 10_000, "command started");
    const pids = Bun.spawnSync(["pgrep", "-P", String(a.proc.pid), "sleep"]).stdout.toString().trim();
    a.proc.kill("SIGTERM");
    expect(await a.exit()).toBe(0);
    await until(() => s.conns[0]!.closed !== null, 3_000, "close seen");
    expect(s.conns[0]!.closed).toBe(1000);
    if (pids) for (const pid of pids.split("\n")) expect(() => process.kill(Number(pid), 0)).toThrow();
  });

  test("connection dropped after welcome: reconnects with the same code and resumes; the session goes on", async () => {
    let connections = 0;
    const s = supportServer({
      onHello: (ws) => {
        connections++;
        welcome(ws);
        if (connections === 1) sessionStart(ws);
        else ws.send(pack({ t: "session.start", session: SESSION, kind: "attended", technician: "Alice Tech", consent: "required", resume: true }));
      },
      onMessage: (ws, m) => {
        if (m.t === "consent") ws.send(pack({ t: "ch.open", session: SESSION, channel: 11, type: "term", cols: 80, rows: 24 }));
        if (m.t === "ch.opened") setTimeout(() => ws.close(1011, "server hiccup"), 50);
        if (m.t === "session.resumed") ws.send(pack({ t: "session.stop", session: SESSION, reason: "technician" }));
      },
    });
    const a = attended(["--server", s.url, "--code", "123456", "--consent", "allow", "--session-grace-ms", "10000"]);
    expect(await a.exit(15_000)).toBe(0);
    expect(s.conns).toHaveLength(2);
    expect(s.conns[1]!.hello!.code).toBe("123456");
    expect(s.conns[1]!.messages[0]).toEqual({ t: "session.resumed", session: SESSION, channels: [11] });
    expect(a.out.join("\n")).toContain("reconnecting");
    expect(a.out.join("\n")).toContain("Reconnected.");
  });

  test("after a drop, 4203 (the server still holds the old connection) is retried with backoff until it lets go; then resumed", async () => {
    let connections = 0;
    const s = supportServer({
      onHello: (ws) => {
        connections++;
        if (connections === 1) {
          welcome(ws);
          sessionStart(ws);
        } else if (connections <= 3) {
          ws.close(SUPPORT_CLOSE.AGENT_CONNECTED, "agent still connected");
        } else {
          welcome(ws);
          ws.send(pack({ t: "session.start", session: SESSION, kind: "attended", technician: "Alice Tech", consent: "required", resume: true }));
        }
      },
      onMessage: (ws, m) => {
        if (m.t === "consent") setTimeout(() => ws.close(1011, "server hiccup"), 50);
        if (m.t === "session.resumed") ws.send(pack({ t: "session.stop", session: SESSION, reason: "technician" }));
      },
    });
    const a = attended(["--server", s.url, "--code", "123456", "--consent", "allow", "--session-grace-ms", "20000"]);
    expect(await a.exit(20_000)).toBe(0);
    expect(s.conns).toHaveLength(4);
    expect(s.conns.every((c) => c.hello?.code === "123456")).toBe(true);
    expect(s.conns[3]!.messages[0]).toEqual({ t: "session.resumed", session: SESSION, channels: [] });
    expect(a.out.join("\n")).toContain("Reconnected.");
  }, 30_000);
});
