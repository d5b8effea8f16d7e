import { Elysia } from "elysia";
import { audit } from "../../audit/audit.ts";
import { isSecret, sha256Hex } from "../../auth/secrets.ts";
import { AgentMessage, CLOSE, decode, encode, Hello, MAX_AGENT_FRAME, Proof, type ServerMessage } from "../../protocol/agent.ts";
import { reportDisconnect } from "../../machines/disconnect.ts";
import { unstorableAt } from "../../protocol/storable.ts";
import { isDataFrame } from "../../protocol/frames.ts";
import type { AppDeps } from "../deps.ts";
import { Batcher } from "../../actors/serial.ts";
import type { ServerWebSocket } from "bun";
import type { AgentSocket } from "./agent-connections.ts";
import type { Link } from "../../relay/relay.ts";

/**
 * `/ws/agent`: an agent proves, before anything else, that it holds both its `cak_` key and the
 * Ed25519 private key registered at enrollment (it signs a fresh server nonce). Only then is the
 * socket bound to `machine/<id>`. Every refusal has its own close code (src/protocol/agent.ts)
 * and an audit event. Heartbeats stay here; presence and inventory go to the machine actor.
 *
 * Served from Bun's own WebSocket handlers (Elysia's server dispatches to `ws.data`'s
 * open/message/close), not from Elysia's `.ws()`: that keeps the upgrade's whole request
 * context and a wrapper object per message alive for the socket's life, about 3–4 KB per
 * agent. Here a socket's state is one small object: its client IP, resolved once at upgrade,
 * and its handshake stage. The connect path's database work is batched across agents: key
 * lookups and the live-sessions check per tick, the audit log group-committed, presence
 * coalesced per machine (src/machines/presence.ts), `last_used_at` once a second.
 */
const HANDSHAKE_MS = 10_000;
const NONCE_BYTES = 32;
/**
 * The embedded database runs one statement at a time (on PGlite's worker thread), so in a storm
 * of thousands of simultaneous handshakes every handshake's statements queue behind all the
 * others', each handshake is slow, some past HANDSHAKE_MS, and those agents retry (more work).
 * So at most this many handshakes run at once there (TETHER_AGENT_HANDSHAKES); the others wait,
 * without their handshake clock running, for at most QUEUED_MS. PostgreSQL has no limit unless
 * one is set. 1,000 rather than 500: bigger batches, a 5,000-agent storm about 12% faster, for
 * about 0.5 KB more RSS per idle agent (docs/PERFORMANCE.md, Agents).
 */
const PGLITE_HANDSHAKES = 1_000;
const QUEUED_MS = 60_000;

type Stage =
  | { at: "queued"; timer: ReturnType<typeof setTimeout>; frames: Array<string | Buffer> }
  | { at: "hello"; timer: ReturnType<typeof setTimeout> }
  | { at: "proof"; timer: ReturnType<typeof setTimeout>; nonce: Uint8Array; hello: Hello; key: KeyRow }
  | { at: "bound"; machineId: string; conn: string }
  | { at: "closed" };
const CLOSED: Stage = { at: "closed" };
type Hello = ReturnType<typeof Hello.parse>;

interface KeyRow {
  key_id: string;
  key_hash: string;
  revoked_at: unknown;
  machine_id: string;
  tenant_id: string;
  public_key: string;
  enrollment_state: string;
  deleted_at: unknown;
}

/** What Bun keeps per agent socket (`ws.data`); the handlers are shared by every socket. */
interface SocketData {
  open(ws: AgentWs): void;
  message(ws: AgentWs, raw: string | Buffer): void;
  close(ws: AgentWs, code: number, reason: string): void;
  ip: string;
  stage: Stage;
  /** Counted among the handshakes running (see PGLITE_HANDSHAKES). */
  admitted: boolean;
}
type AgentWs = ServerWebSocket<SocketData>;

export const agentSocket = (deps: AppDeps) => {
  const { connections } = deps;
  const refuse = async (ws: AgentWs, code: number, reason: string, event: { tenantId?: string; machineId?: string; ip: string }) => {
    await audit(deps.store, {
      tenantId: event.tenantId ?? "00000000-0000-0000-0000-000000000001", type: "agent.refused", outcome: "failure",
      actor: { type: "agent", id: event.machineId ?? null }, target: event.machineId ? { type: "machine", id: event.machineId } : null,
      ip: event.ip, details: { close: code, reason },
    }).catch(() => {});
    ws.close(code, reason);
  };
  const send = (ws: AgentWs, message: ServerMessage) => ws.send(encode(message));

  /** The hellos of one tick are looked up in one query. */
  const keys = new Batcher<string, KeyRow[]>(async (hashes) => {
    const rows = await deps.store.query<KeyRow>(
      `select k.id as key_id, k.key_hash, k.revoked_at, m.id as machine_id, m.tenant_id, m.public_key, m.enrollment_state, m.deleted_at
         from agent_keys k join machines m on m.id = k.machine_id
        where k.key_hash in (select jsonb_array_elements_text($1::text::jsonb))`,
      [JSON.stringify(hashes)]);
    const byHash = new Map<string, KeyRow[]>();
    for (const r of rows) byHash.set(r.key_hash, [...(byHash.get(r.key_hash) ?? []), r]);
    return hashes.map((h) => byHash.get(h) ?? []);
  }, 500);
  /** Sessions of the machines connected in one tick not yet ended, in one query: what each resumes. */
  const liveSessions = new Batcher<string, string[]>(async (machineIds) => {
    const rows = await deps.store.query<{ id: string; machine_id: string }>(
      "select id, machine_id from sessions where ended_at is null and machine_id in (select jsonb_array_elements_text($1::text::jsonb)::uuid)",
      [JSON.stringify(machineIds)]);
    const byMachine = new Map<string, string[]>();
    for (const r of rows) byMachine.set(r.machine_id, [...(byMachine.get(r.machine_id) ?? []), r.id]);
    return machineIds.map((m) => byMachine.get(m) ?? []);
  }, 500);

  // TETHER_AGENT_HANDSHAKES if set (0: no limit); otherwise PGlite's limit, and none on PostgreSQL.
  const limit = deps.config.agentHandshakes ?? (deps.store.flavor === "pglite" ? PGLITE_HANDSHAKES : 0);
  const maxHandshakes = limit === 0 ? Infinity : limit;
  let handshakes = 0;
  const queued: AgentWs[] = [];
  const admit = (ws: AgentWs) => {
    handshakes++;
    ws.data.admitted = true;
    ws.data.stage = { at: "hello", timer: setTimeout(() => ws.close(CLOSE.HANDSHAKE_TIMEOUT, "handshake not completed in time"), HANDSHAKE_MS) };
  };
  /** A handshake ended (bound or closed): the next queued socket starts its own. */
  const release = (ws: AgentWs) => {
    if (!ws.data.admitted) return;
    ws.data.admitted = false;
    handshakes--;
    while (handshakes < maxHandshakes && queued.length > 0) {
      const next = queued.shift()!;
      const stage = next.data.stage;
      if (stage.at !== "queued") continue; // closed while it waited
      clearTimeout(stage.timer);
      admit(next);
      for (const frame of stage.frames) handle(next, frame);
    }
  };

  const handlers: Pick<SocketData, "open" | "message" | "close"> = {
    open(ws) {
      if (handshakes < maxHandshakes) return admit(ws);
      ws.data.stage = { at: "queued", frames: [], timer: setTimeout(() => ws.close(CLOSE.HANDSHAKE_TIMEOUT, "handshake not completed in time"), QUEUED_MS) };
      queued.push(ws);
    },
    message(ws, raw) {
      const stage = ws.data.stage;
      // A bound agent's frames (terminal output above all) need no await: handled here, without
      // the promise and microtask of the async path for every frame.
      if (stage.at === "bound" && typeof raw !== "string" && raw.byteLength <= MAX_AGENT_FRAME) {
        try {
          return onBound(ws, stage, raw);
        } catch (err) {
          return failed(ws, err as Error);
        }
      }
      if (stage.at !== "queued") return handle(ws, raw);
      // Before the challenge an agent sends its hello only.
      if (stage.frames.length >= 2) return void ws.close(CLOSE.BAD_MESSAGE, "expected hello");
      stage.frames.push(typeof raw === "string" ? raw : Buffer.from(raw));
    },
    close(ws, code, reason) {
      const stage = ws.data.stage;
      ws.data.stage = CLOSED;
      release(ws);
      if (stage.at === "closed") return;
      if (stage.at !== "bound") return clearTimeout(stage.timer);
      const socket = connections.get(stage.conn);
      connections.remove(stage.conn);
      deps.relay.removeAgent(stage.conn);
      const address = `machine/${stage.machineId}`;
      deps.system.unpin(address);
      // The reason is the agent's text: journaled only if the database can store it.
      void reportDisconnect(deps.system, stage.machineId, stage.conn, reason && unstorableAt(reason) === null ? reason : String(code), deps.log);
      if (socket) {
        void audit(deps.store, { tenantId: socket.tenantId, type: "agent.disconnected", actor: { type: "agent", id: stage.machineId }, target: { type: "machine", id: stage.machineId }, details: { conn: stage.conn, close: code } }).catch(() => {});
      }
    },
  };

  /** A message, and what becomes of a failure (the database unreachable, say): the agent is closed and retries. */
  function handle(ws: AgentWs, raw: string | Buffer): void {
    onMessage(ws, raw).catch((err: Error) => failed(ws, err));
  }
  function failed(ws: AgentWs, err: Error): void {
    deps.log.warn({ err: err?.message }, "agent message failed");
    ws.close(1011, "server error");
  }

  async function onMessage(ws: AgentWs, raw: string | Buffer): Promise<void> {
    const stage = ws.data.stage;
    if (stage.at === "closed" || stage.at === "queued") return;
    const ip = ws.data.ip;
    const frame = typeof raw === "string" ? new TextEncoder().encode(raw) : raw;
    if (frame.byteLength > MAX_AGENT_FRAME) return void ws.close(CLOSE.TOO_BIG, "frame too large");

    if (stage.at === "hello") {
      const hello = decode(Hello, frame);
      if (!hello) {
        // A login session, API token or enrollment key where the agent key belongs: its own code.
        const any = decode(AgentMessage, frame) ?? safeUnpack(frame);
        const key = typeof (any as { key?: unknown })?.key === "string" ? String((any as { key: string }).key) : "";
        if (isSecret("session", key) || isSecret("apiToken", key) || isSecret("enrollmentKey", key)) return refuse(ws, CLOSE.WRONG_PLANE, "not an agent key", { ip });
        return refuse(ws, CLOSE.BAD_MESSAGE, "expected hello", { ip });
      }
      if (!isSecret("agentKey", hello.key)) {
        const plane = isSecret("session", hello.key) || isSecret("apiToken", hello.key) || isSecret("enrollmentKey", hello.key);
        return refuse(ws, plane ? CLOSE.WRONG_PLANE : CLOSE.UNKNOWN_KEY, plane ? "not an agent key" : "unknown key", { ip, machineId: hello.machine_id });
      }
      // A second frame while the lookup runs is out of order.
      ws.data.stage = { at: "proof", timer: stage.timer, nonce: new Uint8Array(0), hello, key: null as never };
      const key = (await keys.add(sha256Hex(hello.key))).find((k) => k.machine_id === hello.machine_id);
      if ((ws.data.stage as Stage).at === "closed") return;
      if (!key) return refuse(ws, CLOSE.UNKNOWN_KEY, "unknown key", { ip, machineId: hello.machine_id });
      // A removed machine's keys are revoked with it: say it was removed (4007), not just revoked.
      if (key.revoked_at) {
        const removed = Boolean(key.deleted_at);
        return refuse(ws, removed ? CLOSE.MACHINE_REMOVED : CLOSE.KEY_REVOKED, removed ? "machine removed" : "key revoked", { ip, machineId: key.machine_id, tenantId: key.tenant_id });
      }
      const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
      ws.data.stage = { at: "proof", timer: stage.timer, nonce, hello, key };
      send(ws, { t: "challenge", nonce, heartbeat_ms: deps.config.heartbeatMs });
      return;
    }

    if (stage.at === "proof") {
      const { key, nonce, hello } = stage;
      if (!key) return refuse(ws, CLOSE.BAD_MESSAGE, "expected hello", { ip, machineId: hello.machine_id });
      const proof = decode(Proof, frame);
      const who = { ip, machineId: key.machine_id, tenantId: key.tenant_id };
      // A proof that does not match its schema (its inventory, say) is a malformed frame; anything else in its place is no proof.
      if (!proof && (safeUnpack(frame) as { t?: unknown } | null)?.t === "proof") return refuse(ws, CLOSE.BAD_MESSAGE, "malformed proof", who);
      if (!proof || !(await verifyEd25519(key.public_key, nonce, proof.signature))) return refuse(ws, CLOSE.BAD_SIGNATURE, "proof of possession failed", who);
      if (ws.data.stage !== stage) return; // closed meanwhile
      if (key.deleted_at) return refuse(ws, CLOSE.MACHINE_REMOVED, "machine removed", who);
      if (key.enrollment_state !== "active") return refuse(ws, CLOSE.MACHINE_PENDING, "machine pending approval", who);
      clearTimeout(stage.timer);
      const conn = crypto.randomUUID();
      const address = `machine/${key.machine_id}`;
      const boundStage: Stage = { at: "bound", machineId: key.machine_id, conn };
      ws.data.stage = boundStage;
      release(ws);
      const bound = new BoundAgent(ws, conn, key.machine_id, key.key_id, key.tenant_id);
      connections.add(bound);
      deps.system.pin(address);
      connections.touch(key.key_id);
      await Promise.all([
        deps.system.ask(address, { type: "agent.connected", conn, ip, agent_version: hello.agent_version, ...(proof.inventory ? { inventory: ownStrings(proof.inventory) } : {}) }),
        audit(deps.store, { tenantId: key.tenant_id, type: "agent.connected", actor: { type: "agent", id: key.machine_id }, target: { type: "machine", id: key.machine_id }, ip, details: { key_id: key.key_id, conn } }),
      ]);
      if (ws.data.stage !== boundStage) return; // closed meanwhile: the close handler cleaned up
      send(ws, { t: "welcome", machine_id: key.machine_id, heartbeat_ms: deps.config.heartbeatMs, offline_after_ms: deps.config.offlineAfterMs, external_ip: ip });
      // Known to the relay (and so to sessions) only once welcomed: nothing of a session reaches
      // the agent before its welcome (the agent closes on that with 4000).
      deps.relay.addAgent(conn, bound, key.machine_id);
      // Sessions of this machine waiting for it, or in their grace period, (re)start on it.
      for (const sessionId of await liveSessions.add(key.machine_id)) {
        // Closed during the lookup: the sessions keep waiting (or their grace period) for the next one.
        if (ws.data.stage !== boundStage) return;
        try {
          deps.system.send(`session/${sessionId}`, { type: "agent.attached", conn });
        } catch {}
      }
      return;
    }

    return onBound(ws, stage, frame);
  }

  /** Bound: heartbeats here, status to the actor, session frames to the relay. */
  function onBound(ws: AgentWs, stage: Extract<Stage, { at: "bound" }>, frame: Uint8Array): void {
    const socket = connections.get(stage.conn);
    if (!socket) return void ws.close(CLOSE.BAD_MESSAGE, "not a protocol message");
    socket.lastSeen = Date.now();
    if (isDataFrame(frame)) return void deps.relay.fromAgent(stage.conn, frame);
    const message = decode(AgentMessage, frame);
    if (!message) {
      if (!deps.relay.fromAgent(stage.conn, frame)) ws.close(CLOSE.BAD_MESSAGE, "not a protocol message");
      return;
    }
    // A copy: msgpackr's short strings are slices of one string made from the whole frame.
    if (message.t === "status") deps.system.send(`machine/${stage.machineId}`, { type: "agent.status", conn: stage.conn, inventory: ownStrings(message.inventory) });
  }

  const { open, message, close } = handlers;
  return new Elysia({ name: "agent-socket" }).get("/ws/agent", (ctx) => {
    const { request, server } = ctx;
    // The request context (src/http/context.ts) has resolved the client IP already.
    const ip = (ctx as { ip?: string }).ip ?? deps.ips.resolve(server?.requestIP(request)?.address, request.headers.get("x-forwarded-for"));
    const data: SocketData = { open, message, close, ip, stage: CLOSED, admitted: false };
    if (server?.upgrade(request, { data })) return;
    return new Response("Expected a websocket connection", { status: 400 });
  });
};

/**
 * A bound agent socket as the registry (its presence, for the sweeps) and the relay (its data
 * plane) see it: one object whose methods are on the prototype, not an object and six closures
 * per agent.
 */
class BoundAgent implements AgentSocket, Link {
  lastSeen = Date.now();
  constructor(
    private readonly ws: AgentWs,
    readonly conn: string,
    readonly machineId: string,
    readonly keyId: string,
    readonly tenantId: string,
  ) {}
  send(frame: Uint8Array): number {
    return this.ws.send(frame);
  }
  buffered(): number {
    return this.ws.getBufferedAmount();
  }
  close(code: number, reason: string): void {
    this.ws.close(code, reason);
  }
  pause(): void {
    this.ws.pause();
  }
  resume(): void {
    this.ws.resume();
  }
}

/** A deep copy whose strings are strings of their own, not slices of the frame (see where it is used). */
function ownStrings<T>(value: T): T {
  return JSON.parse(JSON.stringify(value)) as T;
}

async function verifyEd25519(publicKeyB64: string, message: Uint8Array, signature: Uint8Array): Promise<boolean> {
  try {
    const key = await crypto.subtle.importKey("raw", Buffer.from(publicKeyB64, "base64"), { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, new Uint8Array(signature), new Uint8Array(message));
  } catch {
    return false;
  }
}

function safeUnpack(frame: Uint8Array): unknown {
  try {
    return require("msgpackr").unpack(frame);
  } catch {
    return null;
  }
}
