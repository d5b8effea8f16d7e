import { Elysia } from "elysia";
import { audit } from "../../audit/audit.ts";
import { isSecret, sha256Hex } from "../../auth/secrets.ts";
import { AgentMessage, CLOSE, decode, encode, Hello, MAX_AGENT_FRAME, Proof, type ServerMessage } from "../../protocol/agent.ts";
import { isDataFrame } from "../../protocol/frames.ts";
import { liveSessionsOfMachine } from "../../sessions/sessions.ts";
import type { AppDeps } from "../deps.ts";
import { bufferedAmount } from "./buffered.ts";

/**
 * `/ws/agent`: an agent proves, before anything else, that it holds both its `cak_` key and the
 * Ed25519 private key registered at enrollment (it signs a fresh server nonce). Only then is the
 * socket bound to `machine/<id>`. Every refusal has its own close code (src/protocol/agent.ts)
 * and an audit event. Heartbeats stay here; presence and inventory go to the machine actor.
 */
const HANDSHAKE_MS = 10_000;
const NONCE_BYTES = 32;

type Stage =
  | { at: "hello"; timer: ReturnType<typeof setTimeout> }
  | { at: "proof"; timer: ReturnType<typeof setTimeout>; nonce: Uint8Array; hello: Hello; key: KeyRow }
  | { at: "bound"; machineId: string; conn: string };
type Hello = ReturnType<typeof Hello.parse>;

interface KeyRow {
  key_id: string;
  revoked_at: unknown;
  machine_id: string;
  tenant_id: string;
  public_key: string;
  enrollment_state: string;
  deleted_at: unknown;
}

export const agentSocket = (deps: AppDeps) => {
  const { connections } = deps;
  const stages = new Map<string, Stage>();
  const refuse = async (ws: { raw: { close(code: number, reason: string): void } }, code: number, reason: string, event: { tenantId?: string; machineId?: string; ip: string }) => {
    await audit(deps.store, {
      tenantId: event.tenantId ?? "00000000-0000-0000-0000-000000000001", type: "agent.refused", outcome: "failure",
      actor: { type: "agent", id: event.machineId ?? null }, target: event.machineId ? { type: "machine", id: event.machineId } : null,
      ip: event.ip, details: { close: code, reason },
    }).catch(() => {});
    ws.raw.close(code, reason);
  };
  const send = (ws: { raw: { send(data: Uint8Array): unknown } }, message: ServerMessage) => ws.raw.send(encode(message));

  return new Elysia({ name: "agent-socket" }).ws("/ws/agent", {
    open(ws) {
      const timer = setTimeout(() => ws.raw.close(CLOSE.HANDSHAKE_TIMEOUT, "handshake not completed in time"), HANDSHAKE_MS);
      stages.set(ws.id, { at: "hello", timer });
    },
    async message(ws, raw) {
      const stage = stages.get(ws.id);
      if (!stage) return;
      const ip = deps.ips.resolve(ws.raw.remoteAddress, ws.data.request.headers.get("x-forwarded-for"));
      const frame = raw instanceof Uint8Array ? raw : typeof raw === "string" ? new TextEncoder().encode(raw) : null;
      if (!frame || frame.byteLength > MAX_AGENT_FRAME) return ws.raw.close(CLOSE.TOO_BIG, "frame too large");

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
        const [key] = await deps.store.query<KeyRow>(
          `select k.id as key_id, k.revoked_at, m.id as machine_id, m.tenant_id, m.public_key, m.enrollment_state, m.deleted_at
             from agent_keys k join machines m on m.id = k.machine_id
            where k.key_hash = $1 and k.machine_id = $2`,
          [sha256Hex(hello.key), hello.machine_id]);
        if (!key) return refuse(ws, CLOSE.UNKNOWN_KEY, "unknown key", { ip, machineId: hello.machine_id });
        // A removed machine's keys are revoked with it: say it was removed (4007), not just revoked.
        if (key.revoked_at) {
          const removed = Boolean(key.deleted_at);
          return refuse(ws, removed ? CLOSE.MACHINE_REMOVED : CLOSE.KEY_REVOKED, removed ? "machine removed" : "key revoked", { ip, machineId: key.machine_id, tenantId: key.tenant_id });
        }
        const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
        stages.set(ws.id, { at: "proof", timer: stage.timer, nonce, hello, key });
        send(ws, { t: "challenge", nonce, heartbeat_ms: deps.config.heartbeatMs });
        return;
      }

      if (stage.at === "proof") {
        const proof = decode(Proof, frame);
        const { key, nonce, hello } = stage;
        const who = { ip, machineId: key.machine_id, tenantId: key.tenant_id };
        if (!proof || !(await verifyEd25519(key.public_key, nonce, proof.signature))) return refuse(ws, CLOSE.BAD_SIGNATURE, "proof of possession failed", who);
        if (key.deleted_at) return refuse(ws, CLOSE.MACHINE_REMOVED, "machine removed", who);
        if (key.enrollment_state !== "active") return refuse(ws, CLOSE.MACHINE_PENDING, "machine pending approval", who);
        clearTimeout(stage.timer);
        const conn = crypto.randomUUID();
        const address = `machine/${key.machine_id}`;
        stages.set(ws.id, { at: "bound", machineId: key.machine_id, conn });
        connections.add({ conn, machineId: key.machine_id, keyId: key.key_id, tenantId: key.tenant_id, lastSeen: Date.now(), close: (code, reason) => ws.raw.close(code, reason) });
        deps.relay.addAgent(conn, { send: (f) => ws.raw.send(f), buffered: () => bufferedAmount(ws.raw), close: (c, r) => ws.raw.close(c, r) }, key.machine_id);
        deps.system.pin(address);
        await deps.store.query("update agent_keys set last_used_at = now() where id = $1", [key.key_id]);
        await deps.system.ask(address, { type: "agent.connected", conn, ip, agent_version: hello.agent_version });
        await audit(deps.store, { tenantId: key.tenant_id, type: "agent.connected", actor: { type: "agent", id: key.machine_id }, target: { type: "machine", id: key.machine_id }, ip, details: { key_id: key.key_id, conn } });
        send(ws, { t: "welcome", machine_id: key.machine_id, heartbeat_ms: deps.config.heartbeatMs, offline_after_ms: deps.config.offlineAfterMs, external_ip: ip });
        // Sessions of this machine waiting for it, or in their grace period, (re)start on it.
        for (const sessionId of await liveSessionsOfMachine(deps.store, key.machine_id)) {
          try {
            deps.system.send(`session/${sessionId}`, { type: "agent.attached", conn });
          } catch {}
        }
        return;
      }

      // Bound: heartbeats here, status to the actor, session frames to the relay.
      const socket = connections.get(stage.conn);
      if (!socket) return ws.raw.close(CLOSE.BAD_MESSAGE, "not a protocol message");
      socket.lastSeen = Date.now();
      if (isDataFrame(frame)) return void deps.relay.fromAgent(stage.conn, frame);
      const message = decode(AgentMessage, frame);
      if (!message) {
        if (!deps.relay.fromAgent(stage.conn, frame)) ws.raw.close(CLOSE.BAD_MESSAGE, "not a protocol message");
        return;
      }
      if (message.t === "status") deps.system.send(`machine/${stage.machineId}`, { type: "agent.status", conn: stage.conn, inventory: message.inventory });
    },
    close(ws, code, reason) {
      const stage = stages.get(ws.id);
      stages.delete(ws.id);
      if (!stage) return;
      if (stage.at !== "bound") return clearTimeout(stage.timer);
      const socket = connections.get(stage.conn);
      connections.remove(stage.conn);
      deps.relay.removeAgent(stage.conn);
      const address = `machine/${stage.machineId}`;
      deps.system.unpin(address);
      try {
        deps.system.send(address, { type: "agent.disconnected", conn: stage.conn, reason: reason || String(code) });
      } catch {}
      if (socket) {
        void audit(deps.store, { tenantId: socket.tenantId, type: "agent.disconnected", actor: { type: "agent", id: stage.machineId }, target: { type: "machine", id: stage.machineId }, details: { conn: stage.conn, close: code } }).catch(() => {});
      }
    },
  });
};

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
