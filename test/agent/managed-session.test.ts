import { afterEach, describe, expect, test } from "bun:test";
import type { Server, ServerWebSocket } from "bun";
import { rmSync } from "node:fs";
import { Packr } from "msgpackr";
import { Heartbeat, Hello, Proof, Status, decode, encode, presentedHello, validate } from "../../src/protocol/agent.ts";
import { channelOf, dataFrame, isDataFrame, payloadOf } from "../../src/protocol/frames.ts";
import { AgentToServer, type ServerToAgent } from "../../src/protocol/relay.ts";
import { freshMachine, killAllAgents, managedArgs, spawnAgent } from "./spawn.ts";

/**
 * The managed agent's session plane through its real /ws/agent connection, against a stub
 * that does the handshake and then speaks relay.ts: consent by --unattended-consent, a
 * terminal through the socket, and a resume after the server drops the connection.
 */
const FAST = ["--reconnect-base-ms", "100", "--reconnect-cap-ms", "300"];
const MACHINE_ID = "01a204c7-0000-7000-8000-0000000000f1";
const KEY = "cak_" + "d".repeat(64);
const SESSION = "0190a3c4-0000-7000-8000-0000000000c1";
const packr = new Packr({ useRecords: false });

interface Conn {
  ws: ServerWebSocket<any>;
  messages: AgentToServer[];
  frames: Uint8Array[];
  welcomed: boolean;
}

let stub: Server<any> | null = null;
const dirs: string[] = [];
afterEach(async () => {
  await killAllAgents();
  stub?.stop(true);
  stub = null;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const machine = () => {
  const m = freshMachine();
  dirs.push(m.dir);
  return m;
};

/** Handshake like the real server (no signature check: protocol.test.ts covers that), then `onWelcome`. */
function agentStub(onWelcome: (c: Conn, n: number) => void, onMessage?: (c: Conn, m: AgentToServer) => void) {
  const conns: Conn[] = [];
  stub = Bun.serve<{ c: Conn; stage: number }>({
    port: 0,
    hostname: "127.0.0.1",
    fetch(req, server) {
      const url = new URL(req.url);
      if (url.pathname === "/api/enroll") return Response.json({ machine_id: MACHINE_ID, key: KEY, enrollment_state: "active", disposition: "new" }, { status: 201 });
      // Challenged as the socket opens if the upgrade presents a hello, as the real server does.
      const stage = validate(Hello, presentedHello(req.headers)) ? 1 : 0;
      if (url.pathname === "/ws/agent" && server.upgrade(req, { data: { c: null as unknown as Conn, stage } })) return undefined;
      return new Response("no", { status: 404 });
    },
    websocket: {
      open(ws) {
        ws.data.c = { ws, messages: [], frames: [], welcomed: false };
        conns.push(ws.data.c);
        if (ws.data.stage === 1) ws.send(encode({ t: "challenge", nonce: crypto.getRandomValues(new Uint8Array(32)), heartbeat_ms: 200 }));
      },
      message(ws, raw) {
        const frame = new Uint8Array(raw as Buffer);
        const c = ws.data.c;
        if (ws.data.stage === 0 && decode(Hello, frame)) {
          ws.data.stage = 1;
          ws.send(encode({ t: "challenge", nonce: crypto.getRandomValues(new Uint8Array(32)), heartbeat_ms: 200 }));
          return;
        }
        if (ws.data.stage === 1 && decode(Proof, frame)) {
          ws.data.stage = 2;
          ws.send(encode({ t: "welcome", machine_id: MACHINE_ID, heartbeat_ms: 200, offline_after_ms: 2_000, external_ip: "127.0.0.1" }));
          c.welcomed = true;
          onWelcome(c, conns.length);
          return;
        }
        if (isDataFrame(frame)) return void c.frames.push(frame);
        if (decode(Heartbeat, frame) || decode(Status, frame)) return;
        const m = decode(AgentToServer, frame);
        if (!m) throw new Error("outside the contract");
        c.messages.push(m);
        onMessage?.(c, m);
      },
    },
  });
  return { url: `http://127.0.0.1:${stub.port}`, conns };
}

const send = (c: Conn, m: ServerToAgent) => c.ws.send(packr.pack(m));
const start = (resume = false): ServerToAgent => ({ t: "session.start", session: SESSION, kind: "unattended", technician: "Alice Tech", consent: "required", resume });

async function until(pred: () => boolean, ms: number, what: string) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(20);
  }
}

describe("managed agent: sessions over /ws/agent", () => {
  test("consent required and --unattended-consent left at its default: denied", async () => {
    const s = agentStub((c) => send(c, start()));
    const m = machine();
    const a = spawnAgent(managedArgs(s.url, { code: "HQ", key: "cek_x" }, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await until(() => s.conns[0]?.messages.length === 1, 15_000, "consent");
    expect(s.conns[0]!.messages[0]).toEqual({ t: "consent", session: SESSION, granted: false });
    send(s.conns[0]!, { t: "ch.open", session: SESSION, channel: 3, type: "cmd", argv: ["true"] });
    await until(() => s.conns[0]!.messages.length === 2, 5_000, "refusal");
    expect(s.conns[0]!.messages[1]).toMatchObject({ t: "ch.closed", channel: 3, reason: "error", error: { code: "NO_SESSION" } });
    expect(await a.stop()).toBe(0);
  });

  test("--unattended-consent allow: a terminal through the socket; the server drops the connection, the agent reconnects and the session resumes with the terminal alive", async () => {
    const s = agentStub(
      (c, n) => send(c, start(n > 1)),
      (c, m) => {
        if (m.t === "consent") send(c, { t: "ch.open", session: SESSION, channel: 21, type: "term", cols: 90, rows: 20 });
      },
    );
    const m = machine();
    const a = spawnAgent(managedArgs(s.url, { code: "HQ", key: "cek_x" }, m.stateDir, [...FAST, "--unattended-consent", "allow", "--session-grace-ms", "10000"]), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await until(() => s.conns[0]?.messages.some((x) => x.t === "ch.opened") ?? false, 15_000, "terminal opened");
    const first = s.conns[0]!;
    expect(first.messages[0]).toEqual({ t: "consent", session: SESSION, granted: true });
    first.ws.send(dataFrame(21, 'echo one$((0+1))\n'));
    const text = (c: Conn) => Buffer.concat(c.frames.filter((f) => channelOf(f) === 21).map(payloadOf)).toString();
    await until(() => text(first).includes("one1"), 10_000, "terminal output");

    first.ws.close(1011, "server restarting");
    await until(() => s.conns.length === 2 && s.conns[1]!.messages.length > 0, 15_000, "reconnect and resume");
    const second = s.conns[1]!;
    expect(second.messages[0]).toEqual({ t: "session.resumed", session: SESSION, channels: [21] });
    second.ws.send(dataFrame(21, 'echo two$((1+1))\n'));
    await until(() => text(second).includes("two2"), 10_000, "terminal output after the resume");
    expect(a.logs.some((e) => e.event === "session.resumed")).toBe(true);

    send(second, { t: "session.stop", session: SESSION, reason: "technician" });
    await until(() => second.messages.some((x) => x.t === "ch.closed" && x.channel === 21), 5_000, "terminal closed");
    expect(second.messages.find((x) => x.t === "ch.closed")).toMatchObject({ reason: "session_ended" });
    expect(a.lines.join("\n")).not.toContain("echo one");
    expect(await a.stop()).toBe(0);
  });
});
