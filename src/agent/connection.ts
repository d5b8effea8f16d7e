import { AGENT_VERSION } from "./version.ts";
import { BunWebSocket } from "./bun-websocket.ts";
import { CLOSE, Challenge, PROTOCOL_VERSION, ServerMessage, Welcome, decode, encode, helloHeaders, type AgentMessage, type Inventory } from "../protocol/agent.ts";
import { keyPrefix } from "./enroll.ts";
import { signNonce } from "./identity.ts";
import { gatherInventory, inventoryFingerprint } from "./inventory.ts";
import { terminate, watchLiveness, type Liveness } from "./liveness.ts";
import type { Logger } from "./log.ts";
import type { SessionHost } from "./session/host.ts";
import { decodeInbound, encodeOutbound, type Outbound } from "./session/wire.ts";

/**
 * One WebSocket session on /ws/agent (M3, M4): hello (as the upgrade request's headers) →
 * challenge (with the 101 response) → proof (Ed25519 over the raw nonce, with the inventory) →
 * welcome; then heartbeats every heartbeat_ms and status
 * {inventory} when it changes and at least every statusIntervalMs. After welcome, data frames
 * and session messages (relay.ts) go to the session host, and it sends through this socket
 * until it closes. A path that went silent (no frame, no pong to our pings for the welcome's
 * offline_after_ms) is dropped (liveness.ts). Resolves when the socket closes, with the close
 * code, so the caller decides how long to wait before the next one.
 */
export interface SessionParams {
  url: string;
  machineId: string;
  key: string;
  privateKey: CryptoKey;
  statusIntervalMs: number;
  statusCheckMs: number;
  handshakeTimeoutMs?: number;
  /**
   * Send the hello as the first frame instead of in the upgrade's headers: for a server that
   * does not read them (one older than them, or behind a proxy that strips them).
   */
  helloFrame?: boolean;
  inventory?: () => Inventory | Promise<Inventory>;
  /** Sessions (issue 5): outlives this connection; attached after welcome, detached at close. */
  host?: Pick<SessionHost, "attach" | "detach" | "handle" | "data">;
}

export interface SessionEnd {
  code: number;
  reason: string;
  /** The handshake completed: the server accepted us. */
  welcomed: boolean;
  /** A challenge came: the server read our hello. */
  challenged: boolean;
  /** We closed it (SIGTERM). */
  byUs: boolean;
  /** How long it was up after its welcome (0 without one): the backoff resets only after a lasting one. */
  connectedMs: number;
}

export function runSession(p: SessionParams, log: Logger, signal: AbortSignal): Promise<SessionEnd> {
  return new Promise((resolve) => {
    const inventory = p.inventory ?? gatherInventory;
    let welcomed = false;
    let challenged = false;
    let welcomedAt = 0;
    const hello = { machine_id: p.machineId, key: p.key, agent_version: AGENT_VERSION, protocol: PROTOCOL_VERSION } as const;
    let liveness: Liveness | null = null;
    let byUs = false;
    let done = false;
    let seq = 0;
    let lastFingerprint = "";
    let lastStatusAt = 0;
    const timers: Array<ReturnType<typeof setInterval>> = [];
    let ws: WebSocket;
    try {
      // Bun's WebSocket takes headers; the hello in them saves the handshake a round trip.
      ws = p.helloFrame ? new WebSocket(p.url) : new BunWebSocket(p.url, { headers: helloHeaders(hello) });
    } catch (e) {
      resolve({ code: 1006, reason: (e as Error).message, welcomed: false, challenged: false, byUs: false, connectedMs: 0 });
      return;
    }
    ws.binaryType = "arraybuffer";

    const finish = (code: number, reason: string) => {
      if (done) return;
      done = true;
      for (const t of timers) clearInterval(t);
      liveness?.stop();
      signal.removeEventListener("abort", onAbort);
      if (welcomed) p.host?.detach();
      resolve({ code, reason, welcomed, challenged, byUs, connectedMs: welcomed ? Date.now() - welcomedAt : 0 });
    };
    const send = (m: AgentMessage) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(encode(m) as Uint8Array<ArrayBuffer>);
    };
    const sendSession = (out: Outbound) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(encodeOutbound(out));
    };
    /** The inventory to report now, if it changed or is due (`force`: in any case); null if not. */
    const due = async (force: boolean): Promise<Inventory | null> => {
      let inv: Inventory;
      try {
        inv = await inventory();
      } catch (e) {
        log.warn({ event: "status.inventory_failed", err: (e as Error).message }, "could not collect the inventory");
        return null;
      }
      const fp = inventoryFingerprint(inv);
      if (!force && fp === lastFingerprint && Date.now() - lastStatusAt < p.statusIntervalMs) return null;
      lastFingerprint = fp;
      lastStatusAt = Date.now();
      return inv;
    };
    let collecting = false; // one collection at a time (`who` may take up to its timeout)
    const sendStatus = async (force: boolean) => {
      if (collecting) return;
      collecting = true;
      try {
        const inv = await due(force);
        if (!inv || done) return;
        send({ t: "status", inventory: inv });
        log.debug({ event: "status.sent" }, "status sent");
      } finally {
        collecting = false;
      }
    };
    /** Whether the proof carried the inventory (then no status is needed right after welcome). */
    let provedWithInventory = false;
    const onAbort = () => {
      byUs = true;
      try {
        ws.close(CLOSE.NORMAL, "agent stopping");
      } catch {}
      // If the server does not answer the close, do not hang the shutdown.
      setTimeout(() => finish(CLOSE.NORMAL, "agent stopping"), 2_000).unref?.();
    };
    signal.addEventListener("abort", onAbort, { once: true });

    const handshakeTimer = setTimeout(() => {
      if (!welcomed && !done) {
        log.warn({ event: "connect.handshake_timeout" }, "no welcome from the server in time; closing");
        try {
          ws.close(CLOSE.NORMAL, "handshake timeout");
        } catch {}
        setTimeout(() => finish(CLOSE.HANDSHAKE_TIMEOUT, "handshake timeout"), 1_000);
      }
    }, p.handshakeTimeoutMs ?? 30_000);
    timers.push(handshakeTimer as unknown as ReturnType<typeof setInterval>);

    ws.addEventListener("open", () => {
      log.debug({ event: "connect.open", url: p.url, hello_frame: Boolean(p.helloFrame) }, "socket open; waiting for the challenge");
      if (p.helloFrame) send({ t: "hello", ...hello });
    });

    ws.addEventListener("message", (ev) => {
      const data = ev.data;
      const frame = data instanceof ArrayBuffer ? new Uint8Array(data) : typeof data === "string" ? null : new Uint8Array(data as ArrayBufferLike);
      if (welcomed && p.host && frame) {
        const inbound = decodeInbound(frame);
        if (inbound?.kind === "data") return p.host.data(inbound.frame);
        if (inbound?.kind === "message") return p.host.handle(inbound.message);
      }
      const msg = frame ? decode(ServerMessage, frame) : null;
      if (!msg) {
        log.warn({ event: "connect.bad_frame" }, "the server sent a frame that is not a protocol message; closing");
        ws.close(CLOSE.BAD_MESSAGE, "bad frame");
        return;
      }
      if (msg.t === "challenge") {
        challenged = true;
        const c = msg as ReturnType<typeof Challenge.parse>;
        void Promise.all([signNonce(p.privateKey, c.nonce), due(true)]).then(([signature, inv]) => {
          provedWithInventory = inv !== null;
          send({ t: "proof", signature, ...(inv ? { inventory: inv } : {}) });
        });
        return;
      }
      if (msg.t === "welcome" && !welcomed) {
        const w = msg as ReturnType<typeof Welcome.parse>;
        welcomed = true;
        welcomedAt = Date.now();
        clearTimeout(handshakeTimer);
        log.info({ event: "connect.online", machine_id: w.machine_id, key_prefix: keyPrefix(p.key), heartbeat_ms: w.heartbeat_ms, offline_after_ms: w.offline_after_ms, external_ip: w.external_ip }, "connected");
        timers.push(setInterval(() => send({ t: "heartbeat", seq: seq++ }), w.heartbeat_ms));
        liveness = watchLiveness(ws, {
          intervalMs: w.heartbeat_ms,
          deadAfterMs: w.offline_after_ms,
          onDead: (silentMs, limitMs) => {
            log.warn({ event: "connect.silent", silent_ms: silentMs, limit_ms: limitMs }, "nothing heard from the server (no frame, no pong) for too long: the path is dead (NAT or firewall timeout, server host down); dropping the connection and reconnecting");
            terminate(ws);
            finish(1006, `server silent for ${silentMs} ms`);
          },
        });
        if (!provedWithInventory) void sendStatus(true);
        timers.push(setInterval(() => void sendStatus(false), Math.min(p.statusCheckMs, p.statusIntervalMs)));
        p.host?.attach(sendSession, () => ws.bufferedAmount);
      }
    });

    ws.addEventListener("error", () => {
      // A close event follows with the details.
    });
    ws.addEventListener("close", (ev) => finish(ev.code, ev.reason));
  });
}
