import { Elysia } from "elysia";
import { audit } from "../../audit/audit.ts";
import { DEFAULT_TENANT_ID } from "../../auth/tenants.ts";
import { addressKey } from "../../auth/client-ip.ts";
import { isSecret, sha256Hex } from "../../auth/secrets.ts";
import { AgentMessage, CLOSE, decode, encode, Hello, MAX_AGENT_FRAME, MAX_HELLO_FRAME, presentedHello, Proof, PROTOCOL_VERSION, type ServerMessage, unpack, validate } from "../../protocol/agent.ts";
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
 * and an audit event (rate-limited per client address: RefusalAudit below). Heartbeats stay
 * here; presence and inventory go to the machine actor.
 *
 * Served from Bun's own WebSocket handlers (Elysia's server dispatches to `ws.data`'s
 * open/message/close), not from Elysia's `.ws()`: that keeps the upgrade's whole request
 * context and a wrapper object per message alive for the socket's life, about 3–4 KB per
 * agent. Here a socket's state is one small object: its client IP, resolved once at upgrade,
 * and its handshake stage. The connect path's database work is batched across agents: key
 * lookups and the live-sessions check per tick, the audit log group-committed, presence
 * coalesced per machine (src/machines/presence.ts), `last_used_at` once a second.
 */
const NONCE_BYTES = 32;
/**
 * The embedded database runs one statement at a time (on PGlite's worker thread), so in a storm
 * of thousands of simultaneous handshakes every handshake's statements queue behind all the
 * others', each handshake is slow, some past the handshake clock, and those agents retry (more
 * work). So at most this many handshakes run at once there (TETHER_AGENT_HANDSHAKES); the
 * others wait, without their handshake clock running, for at most `queuedMs`. PostgreSQL has no
 * limit unless one is set. 1,000 rather than 500: bigger batches, a 5,000-agent storm about 12%
 * faster, for about 0.5 KB more RSS per idle agent (docs/PERFORMANCE.md, Agents).
 *
 * A slot is taken when a well-formed hello arrives (the database work starts there), not when
 * the socket opens: sockets that send nothing cannot hold the slots, and are closed after
 * `helloMs` of their own.
 */
const PGLITE_HANDSHAKES = 1_000;

/**
 * The largest frame held in the proof's place while the key of a presented hello is looked up:
 * more than a proof at its schema's limits (about 150 KiB, nearly all of it 64 disks' mount
 * points), far less than a frame may be (4 MiB), since nothing about the client is known yet.
 */
const MAX_EARLY_PROOF = 256 * 1024;

/** The socket's clocks and caps (docs/PROTOCOL.md §2–3). Read when used: tests shorten them. */
export const AGENT_SOCKET_LIMITS = {
  /** From open to the hello (no slot is held meanwhile). */
  helloMs: 5_000,
  /** From taking a slot to the welcome. */
  handshakeMs: 10_000,
  /** The longest wait for a slot. */
  queuedMs: 60_000,
  /**
   * Sockets waiting for a slot, in all and per client address (IPv6: per /64), as multiples of
   * the slot limit (10,000 and 5,000 on PGlite's default). Per address is generous: a fleet
   * behind one NAT, or a proxy not in TETHER_TRUSTED_PROXIES, is one address, and the
   * benchmark's 5,000 agents all come from 127.0.0.1.
   */
  queuedPerSlot: 10,
  queuedPerAddressPerSlot: 5,
  /**
   * `agent.refused` rows per client address: a burst, then one per `auditEveryMs`. Refusals
   * beyond it are counted and written as one summary event per address and tenant after
   * `auditSummaryMs`, so junk from one address cannot flood the audit log.
   */
  auditBurst: 20,
  auditEveryMs: 3_000,
  auditSummaryMs: 60_000,
};

/** Why a handshake was refused: the audit's `details.reason`, with the close code and text. */
const REFUSED = {
  bad_message: [CLOSE.BAD_MESSAGE, "expected hello"],
  hello_too_large: [CLOSE.BAD_MESSAGE, "expected hello (at most 2 KiB)"],
  out_of_order: [CLOSE.BAD_MESSAGE, "nothing but the hello before the challenge"],
  unsupported_protocol: [CLOSE.UNSUPPORTED_PROTOCOL, `protocol not supported; this server speaks ${PROTOCOL_VERSION}`],
  wrong_plane: [CLOSE.WRONG_PLANE, "not an agent key"],
  unknown_key: [CLOSE.UNKNOWN_KEY, "unknown key"],
  key_revoked: [CLOSE.KEY_REVOKED, "key revoked"],
  machine_removed: [CLOSE.MACHINE_REMOVED, "machine removed"],
  machine_pending: [CLOSE.MACHINE_PENDING, "machine pending approval"],
  machine_disabled: [CLOSE.MACHINE_DISABLED, "machine disabled"],
  malformed_proof: [CLOSE.BAD_MESSAGE, "malformed proof"],
  not_a_proof: [CLOSE.BAD_SIGNATURE, "proof of possession failed"],
  bad_signature: [CLOSE.BAD_SIGNATURE, "proof of possession failed"],
  no_hello: [CLOSE.HANDSHAKE_TIMEOUT, "no hello in time"],
  handshake_timeout: [CLOSE.HANDSHAKE_TIMEOUT, "handshake not completed in time"],
  proof_timeout: [CLOSE.PROOF_TIMEOUT, "no proof in time"],
  busy: [CLOSE.BUSY, "server busy; retry later"],
  queue_timeout: [CLOSE.BUSY, "no handshake slot in time; retry later"],
} as const satisfies Record<string, readonly [number, string]>;
type Refusal = keyof typeof REFUSED;

type Timer = ReturnType<typeof setTimeout>;
type Stage =
  /** Open, no hello yet: no slot held, `helloMs`. */
  | { at: "hello"; timer: Timer }
  /** A well-formed hello, waiting for a slot: `queuedMs`. Only the parsed hello is kept. */
  | { at: "queued"; timer: Timer; hello: Hello; presented: boolean }
  /**
   * Holds a slot: its key being looked up. `handshakeMs` runs from here to the welcome. A hello
   * presented in the upgrade's headers is challenged at once (`nonce`), and its proof may come
   * in before the lookup is done (`early`, checked once it is); `leftWith`: the agent's close
   * code, if it left meanwhile.
   */
  | { at: "lookup"; timer: Timer; hello: Hello; nonce?: Uint8Array; early?: string | Buffer; leftWith?: number }
  /** Challenged: the next frame must be the proof. */
  | { at: "proof"; timer: Timer; nonce: Uint8Array; hello: Hello; key: KeyRow }
  /** The proof is being checked: anything more before the welcome is out of order. */
  | { at: "verifying"; timer: Timer; hello: Hello; key: KeyRow }
  | { at: "bound"; machineId: string; conn: string }
  /** Refused: its audit row is being written, then it is closed. */
  | { at: "closing" }
  | { at: "closed" }
  /** Upgraded with a hello in its headers (HELLO_HEADERS), not yet open: the fields as presented. */
  | { at: "presented"; fields: Record<string, unknown> };
const CLOSED: Stage = { at: "closed" };
const CLOSING: Stage = { at: "closing" };

interface KeyRow {
  key_id: string;
  key_hash: string;
  revoked_at: unknown;
  /** `agent_keys.last_used_at` in ms, null if never used. */
  last_used_ms: number | null;
  machine_id: string;
  tenant_id: string;
  public_key: string;
  enrollment_state: string;
  deleted_at: unknown;
  disabled_at: unknown;
}

/**
 * Whom a refusal concerns. Only a machine whose key matched (by its SHA-256) is named as actor
 * and target, and only its tenant gets the row; a machine id the client merely claimed goes into
 * the details, and the row to the default tenant.
 */
interface Who {
  key?: KeyRow;
  claimed?: string;
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
  const limits = AGENT_SOCKET_LIMITS;
  const refusals = new RefusalAudit(deps);
  // At shutdown the counted refusals are written as their summaries, before the audit's last flush.
  deps.connections.beforeFlush(() => refusals.flush());
  const send = (ws: AgentWs, message: ServerMessage) => ws.send(encode(message));

  /**
   * Batches of these reads that may run at once: in a storm each batch of 500 waited its turn,
   * one round trip after another, and the proofs waited for their keys (docs/PERFORMANCE.md,
   * Agents). PGlite runs one statement at a time: two there, so the next waits in its queue.
   */
  const concurrentReads = deps.store.flavor === "pglite" ? 2 : 4;
  /** The hellos of one tick are looked up in one query. */
  const keys = new Batcher<string, KeyRow[]>(async (hashes) => {
    const rows = await deps.store.query<KeyRow>(
      `select k.id as key_id, k.key_hash, k.revoked_at, (extract(epoch from k.last_used_at) * 1000)::float8 as last_used_ms, m.id as machine_id, m.tenant_id, m.public_key, m.enrollment_state, m.deleted_at, m.disabled_at
         from agent_keys k join machines m on m.id = k.machine_id
        where k.key_hash in (select jsonb_array_elements_text($1::text::jsonb))`,
      [JSON.stringify(hashes)]);
    const byHash = new Map<string, KeyRow[]>();
    for (const r of rows) byHash.set(r.key_hash, [...(byHash.get(r.key_hash) ?? []), r]);
    return hashes.map((h) => byHash.get(h) ?? []);
  }, 500, concurrentReads);
  /** Sessions of the machines connected in one tick not yet ended, in one query: what each resumes. */
  const liveSessions = new Batcher<string, string[]>(async (machineIds) => {
    const rows = await deps.store.query<{ id: string; machine_id: string }>(
      "select id, machine_id from sessions where ended_at is null and machine_id in (select jsonb_array_elements_text($1::text::jsonb)::uuid)",
      [JSON.stringify(machineIds)]);
    const byMachine = new Map<string, string[]>();
    for (const r of rows) byMachine.set(r.machine_id, [...(byMachine.get(r.machine_id) ?? []), r.id]);
    return machineIds.map((m) => byMachine.get(m) ?? []);
  }, 500, concurrentReads);

  // TETHER_AGENT_HANDSHAKES if set (0: no limit); otherwise PGlite's limit, and none on PostgreSQL.
  const limit = deps.config.agentHandshakes ?? (deps.store.flavor === "pglite" ? PGLITE_HANDSHAKES : 0);
  const maxHandshakes = limit === 0 ? Infinity : limit;
  let handshakes = 0;
  /** Waiting for a slot, in arrival order; removed as they leave, so the set never holds the dead. */
  const queued = new Set<AgentWs>();
  const queuedByAddress = new Map<string, number>();
  const dequeue = (ws: AgentWs) => {
    if (!queued.delete(ws)) return;
    const k = addressKey(ws.data.ip);
    const n = (queuedByAddress.get(k) ?? 1) - 1;
    if (n > 0) queuedByAddress.set(k, n);
    else queuedByAddress.delete(k);
  };

  const admit = (ws: AgentWs, hello: Hello, presented: boolean) => {
    handshakes++;
    ws.data.admitted = true;
    const stage: Extract<Stage, { at: "lookup" }> = { at: "lookup", hello, timer: setTimeout(() => expire(ws), limits.handshakeMs) };
    ws.data.stage = stage;
    // Sent while the key is looked up (in `open`, it goes out with the 101 response).
    if (presented) stage.nonce = challenge(ws);
    lookup(ws, stage).catch((err: Error) => failed(ws, err));
  };
  /** A fresh nonce, sent to the agent to sign. */
  const challenge = (ws: AgentWs): Uint8Array => {
    const nonce = crypto.getRandomValues(new Uint8Array(NONCE_BYTES));
    send(ws, { t: "challenge", nonce, heartbeat_ms: deps.config.heartbeatMs });
    return nonce;
  };
  /** A handshake ended (bound, refused or closed): the next queued socket starts its own. */
  const release = (ws: AgentWs) => {
    if (!ws.data.admitted) return;
    ws.data.admitted = false;
    handshakes--;
    while (handshakes < maxHandshakes && queued.size > 0) {
      const next = queued.values().next().value!;
      dequeue(next);
      const stage = next.data.stage;
      if (stage.at !== "queued") continue;
      clearTimeout(stage.timer);
      admit(next, stage.hello, stage.presented);
    }
  };
  /** Ends a socket's handshake, whatever its stage: its clock, its place in the queue, its slot. */
  const settle = (ws: AgentWs, next: Stage): Stage => {
    const stage = ws.data.stage;
    ws.data.stage = next;
    if ("timer" in stage) clearTimeout(stage.timer);
    dequeue(ws);
    release(ws);
    return stage;
  };

  /** Refused: the slot is freed at once, the socket closed once its audit row is written (or counted). */
  const refuse = async (ws: AgentWs, why: Refusal, who: Who = {}, details: Record<string, unknown> = {}): Promise<void> => {
    const at = ws.data.stage.at;
    if (at === "closing" || at === "closed" || at === "bound") return;
    settle(ws, CLOSING);
    const [code, text] = REFUSED[why];
    // Closed once its row is written, or after REFUSAL_AUDIT_WAIT_MS if the database hangs: a
    // refused socket holds nothing, but it must not stay open (the row is still written later).
    await Promise.race([refusals.record(ws.data.ip, code, why, who, details), Bun.sleep(REFUSAL_AUDIT_WAIT_MS)]);
    ws.close(code, text);
  };
  /** A clock ran out: what it means depends on how far the handshake got. */
  const expire = (ws: AgentWs) => {
    const stage = ws.data.stage;
    if (stage.at === "hello") return void refuse(ws, "no_hello");
    if (stage.at === "queued") return void refuse(ws, "queue_timeout", { claimed: stage.hello.machine_id });
    // Challenged already (a presented hello) and no proof yet: the agent's clock ran out, as in `proof`.
    if (stage.at === "lookup") return void refuse(ws, stage.nonce && !stage.early ? "proof_timeout" : "handshake_timeout", { claimed: stage.hello.machine_id });
    if (stage.at === "proof") return void refuse(ws, "proof_timeout", { key: stage.key });
    if (stage.at === "verifying") return void refuse(ws, "handshake_timeout", { key: stage.key });
  };

  const handlers: Pick<SocketData, "open" | "message" | "close"> = {
    open(ws) {
      const presented = ws.data.stage.at === "presented" ? ws.data.stage.fields : null;
      const stage: Stage = { at: "hello", timer: setTimeout(() => expire(ws), limits.helloMs) };
      ws.data.stage = stage;
      if (presented) hello(ws, stage, presented, true);
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
      if (stage.at === "hello") return onHello(ws, stage, raw);
      // Challenged before its key was found: the frame in the proof's place waits for the key (one
      // frame, a copy, no bigger than a proof can be: the client is not known yet).
      if (stage.at === "lookup" && stage.nonce && !stage.early && (typeof raw === "string" ? raw.length : raw.byteLength) <= MAX_EARLY_PROOF) {
        return void (stage.early = typeof raw === "string" ? raw : Buffer.from(raw));
      }
      // Before the challenge an agent sends its hello only; nothing else is buffered meanwhile.
      if (stage.at === "queued" || stage.at === "lookup") return void refuse(ws, "out_of_order", { claimed: stage.hello.machine_id });
      if (stage.at === "verifying") return void refuse(ws, "out_of_order", { key: stage.key });
      if (stage.at === "proof" || stage.at === "bound") onMessage(ws, stage, raw).catch((err: Error) => failed(ws, err));
    },
    close(ws, code, reason) {
      const stage = settle(ws, CLOSED);
      // The agent left after its challenge without a proof: a key without its private key, perhaps.
      if (stage.at === "proof") void refusals.record(ws.data.ip, code, "no_proof", { key: stage.key }, { by: "agent" });
      // Challenged before its key was found: audited once it is (`lookup`).
      if (stage.at === "lookup" && stage.nonce) stage.leftWith = code;
      if (stage.at !== "bound") return;
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

  /** A failure (the database unreachable, say): the agent is closed and retries. Logged, not audited. */
  function failed(ws: AgentWs, err: Error): void {
    deps.log.warn({ err: err?.message }, "agent message failed");
    const at = ws.data.stage.at;
    if (at === "closing" || at === "closed") return; // already refused: its own code stands
    if (at !== "bound") settle(ws, CLOSING);
    ws.close(1011, "server error");
  }

  /** The first frame: a hello, checked without the database (see `hello`). */
  function onHello(ws: AgentWs, stage: Extract<Stage, { at: "hello" }>, raw: string | Buffer): void {
    if (typeof raw === "string") return void refuse(ws, "bad_message");
    if (raw.byteLength > MAX_HELLO_FRAME) return void refuse(ws, "hello_too_large", {}, { bytes: raw.byteLength });
    hello(ws, stage, unpack(raw), false);
  }

  /**
   * A hello, from the first frame or the upgrade's headers (`presented`): checked without the
   * database; then a slot, or a place in the queue. A presented hello is challenged as soon as it
   * has a slot, without waiting for its key (docs/PROTOCOL.md §2).
   */
  function hello(ws: AgentWs, stage: Extract<Stage, { at: "hello" }>, value: unknown, presented: boolean): void {
    const parsed = validate(Hello, value);
    if (!parsed) {
      const fields = (value !== null && typeof value === "object" ? value : {}) as { t?: unknown; protocol?: unknown; key?: unknown };
      // Another version's hello may differ in more than its number: the version is what to say.
      if (fields.t === "hello" && typeof fields.protocol === "number" && fields.protocol !== PROTOCOL_VERSION) {
        return void refuse(ws, "unsupported_protocol", {}, { protocol: Number.isSafeInteger(fields.protocol) ? fields.protocol : null });
      }
      // A login session, API token or enrollment key where the agent key belongs: its own code.
      return void refuse(ws, otherPlane(typeof fields.key === "string" ? fields.key : "") ? "wrong_plane" : "bad_message");
    }
    // The database writes uuids in lower case; the schema accepts either.
    parsed.machine_id = parsed.machine_id.toLowerCase();
    const claimed = { claimed: parsed.machine_id };
    if (!isSecret("agentKey", parsed.key)) return void refuse(ws, otherPlane(parsed.key) ? "wrong_plane" : "unknown_key", claimed);
    clearTimeout(stage.timer);
    if (handshakes < maxHandshakes) return admit(ws, parsed, presented);
    const k = addressKey(ws.data.ip);
    if (queued.size >= maxHandshakes * limits.queuedPerSlot || (queuedByAddress.get(k) ?? 0) >= maxHandshakes * limits.queuedPerAddressPerSlot) {
      return void refuse(ws, "busy", claimed);
    }
    ws.data.stage = { at: "queued", hello: parsed, presented, timer: setTimeout(() => expire(ws), limits.queuedMs) };
    queued.add(ws);
    queuedByAddress.set(k, (queuedByAddress.get(k) ?? 0) + 1);
  }

  /** Holding a slot: the key, by its hash, batched with the other hellos of this tick. */
  async function lookup(ws: AgentWs, stage: Extract<Stage, { at: "lookup" }>): Promise<void> {
    const { hello } = stage;
    const rows = await keys.add(sha256Hex(hello.key));
    const key = rows.find((k) => k.machine_id === hello.machine_id);
    const refusal: [Refusal, Who] | null = !key
      // A key of another machine names its own machine (the key matched); a hash of nothing names nobody.
      ? ["unknown_key", { key: rows[0], claimed: hello.machine_id }]
      // A removed machine's keys are revoked with it: say it was removed (4007), not just revoked.
      : key.revoked_at ? [key.deleted_at ? "machine_removed" : "key_revoked", { key }] : null;
    if (ws.data.stage !== stage) {
      // The agent left after a challenge sent before its key was found: audited once the key is
      // known, as its refusal, or as `close` audits a key that left without a proof (a refusal's
      // own clock, or a server close, audits itself).
      if (stage.leftWith !== undefined && (refusal || !stage.early)) void refusals.record(ws.data.ip, stage.leftWith, refusal?.[0] ?? "no_proof", refusal?.[1] ?? { key }, { by: "agent" });
      return;
    }
    if (refusal) return refuse(ws, ...refusal);
    const proof: Extract<Stage, { at: "proof" }> = { at: "proof", timer: stage.timer, nonce: stage.nonce ?? challenge(ws), hello, key: key! };
    ws.data.stage = proof;
    if (stage.early) await onMessage(ws, proof, stage.early);
  }

  async function onMessage(ws: AgentWs, stage: Extract<Stage, { at: "proof" | "bound" }>, raw: string | Buffer): Promise<void> {
    const ip = ws.data.ip;
    const frame = typeof raw === "string" ? new TextEncoder().encode(raw) : raw;
    if (frame.byteLength > MAX_AGENT_FRAME) return void ws.close(CLOSE.TOO_BIG, "frame too large");
    if (stage.at === "bound") return onBound(ws, stage, frame);

    const { key, nonce, hello } = stage;
    const who = { key };
    // A second frame while the proof is checked is out of order.
    const verifying: Stage = { at: "verifying", timer: stage.timer, hello, key };
    ws.data.stage = verifying;
    const proof = decode(Proof, frame);
    // A proof that does not match its schema (its inventory, say) is a malformed frame; anything else in its place is no proof.
    if (!proof && (unpack(frame) as { t?: unknown } | null)?.t === "proof") return refuse(ws, "malformed_proof", who);
    if (!proof) return refuse(ws, "not_a_proof", who);
    if (!(await deps.signatures.verify(key.public_key, nonce, proof.signature))) return refuse(ws, "bad_signature", who);
    if (ws.data.stage !== verifying) return; // closed meanwhile
    if (key.deleted_at) return refuse(ws, "machine_removed", who);
    if (key.enrollment_state !== "active") return refuse(ws, "machine_pending", who);
    if (key.disabled_at) return refuse(ws, "machine_disabled", who);
    clearTimeout(stage.timer);
    const conn = crypto.randomUUID();
    const address = `machine/${key.machine_id}`;
    const boundStage: Stage = { at: "bound", machineId: key.machine_id, conn };
    ws.data.stage = boundStage;
    release(ws);
    const bound = new BoundAgent(ws, conn, key.machine_id, key.key_id, key.tenant_id);
    connections.add(bound);
    deps.system.pin(address);
    connections.touch(key.key_id, key.last_used_ms);
    await Promise.all([
      deps.system.ask(address, { type: "agent.connected", conn, ip, agent_version: hello.agent_version, ...(proof.inventory ? { inventory: proof.inventory } : {}) }),
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
    // The actor keeps a copy of a new inventory (src/actors/machine.ts, keptInventory).
    if (message.t === "status") deps.system.send(`machine/${stage.machineId}`, { type: "agent.status", conn: stage.conn, inventory: message.inventory });
  }

  const { open, message, close } = handlers;
  return new Elysia({ name: "agent-socket" }).get("/ws/agent", (ctx) => {
    const { request, server } = ctx;
    // The request context (src/http/context.ts) has resolved the client IP already.
    const ip = (ctx as { ip?: string }).ip ?? deps.ips.resolve(server?.requestIP(request)?.address, request.headers.get("x-forwarded-for"));
    const fields = presentedHello(request.headers);
    const data: SocketData = { open, message, close, ip, stage: fields ? { at: "presented", fields } : CLOSED, admitted: false };
    if (server?.upgrade(request, { data })) return;
    return new Response("Expected a websocket connection", { status: 400 });
  });
};

const otherPlane = (key: string) => isSecret("session", key) || isSecret("apiToken", key) || isSecret("enrollmentKey", key);

/** Refusals beyond an address's budget, per tenant, until the summary is written. */
interface Suppressed {
  ip: string;
  count: number;
  reasons: Record<string, number>;
  machines: Set<string>;
  first: number;
}

/**
 * `agent.refused` rows, limited per client address (a token bucket: `auditBurst`, then one per
 * `auditEveryMs`). Past the budget a refusal is counted instead, and once per `auditSummaryMs`
 * each address's count is written as one `agent.refused` row per tenant (`details.summary`,
 * with the count by reason and up to 20 of the key-matched machines), and logged once: a
 * security trail of everything, at a bounded cost in rows per address.
 */
class RefusalAudit {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private suppressed = new Map<string, Suppressed>();
  private overflow = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private pruned = 0;

  constructor(private readonly deps: Pick<AppDeps, "store" | "log">) {}

  /** Resolves once the row is written (or the refusal counted); never rejects. */
  record(ip: string, code: number, reason: string, who: Who, details: Record<string, unknown>): Promise<void> {
    const tenantId = who.key?.tenant_id ?? DEFAULT_TENANT_ID;
    const machineId = who.key?.machine_id;
    const addr = addressKey(ip);
    if (!this.take(addr)) {
      this.count(addr, ip, tenantId, reason, machineId);
      return Promise.resolve();
    }
    // A claimed id is worth keeping only where it differs from the key's machine.
    const claimed = who.claimed && who.claimed !== machineId ? { claimed_machine_id: who.claimed } : {};
    return audit(this.deps.store, {
      tenantId, type: "agent.refused", outcome: "failure",
      actor: machineId ? { type: "agent", id: machineId } : { type: "anonymous" },
      target: machineId ? { type: "machine", id: machineId } : null,
      ip, details: { close: code, reason, ...claimed, ...details },
    }).catch(() => {});
  }

  private take(addr: string): boolean {
    const { auditBurst: burst, auditEveryMs: every } = AGENT_SOCKET_LIMITS;
    const now = Date.now();
    let bucket = this.buckets.get(addr);
    if (!bucket) {
      // Bounded: idle addresses (their bucket full again) are forgotten; past the bound, new
      // addresses share one budget.
      if (this.buckets.size >= MAX_TRACKED && now - this.pruned > 1_000) this.prune(now);
      const k = this.buckets.size < MAX_TRACKED ? addr : "*";
      bucket = this.buckets.get(k);
      if (!bucket) this.buckets.set(k, (bucket = { tokens: burst, at: now }));
    }
    bucket.tokens = Math.min(burst, bucket.tokens + (now - bucket.at) / every);
    bucket.at = now;
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  private prune(now: number): void {
    this.pruned = now;
    const { auditBurst: burst, auditEveryMs: every } = AGENT_SOCKET_LIMITS;
    for (const [addr, b] of this.buckets) if (b.tokens + (now - b.at) / every >= burst) this.buckets.delete(addr);
  }

  private count(addr: string, ip: string, tenantId: string, reason: string, machineId: string | undefined): void {
    const k = `${addr} ${tenantId}`;
    let s = this.suppressed.get(k);
    if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), AGENT_SOCKET_LIMITS.auditSummaryMs);
      this.timer.unref?.();
    }
    if (!s) {
      // Too many addresses at once: the rest are counted together.
      if (this.suppressed.size >= MAX_TRACKED) return void this.overflow++;
      s = { ip, count: 0, reasons: {}, machines: new Set(), first: Date.now() };
      this.suppressed.set(k, s);
    }
    s.count++;
    s.reasons[reason] = (s.reasons[reason] ?? 0) + 1;
    if (machineId && s.machines.size < 20) s.machines.add(machineId);
  }

  /** Writes the summaries of what was counted (every `auditSummaryMs`, and at shutdown). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const batch = this.suppressed;
    const overflow = this.overflow;
    this.suppressed = new Map();
    this.overflow = 0;
    const now = Date.now();
    this.prune(now);
    if (overflow > 0) {
      this.deps.log.warn({ event: "agent.refusals_summarized", refusals: overflow }, "agent refusals from too many addresses to track; written as one summary");
      void audit(this.deps.store, {
        tenantId: DEFAULT_TENANT_ID, type: "agent.refused", outcome: "failure", actor: { type: "anonymous" }, target: null,
        details: { summary: true, refusals: overflow, addresses: "untracked", until: new Date(now).toISOString() },
      }).catch(() => {});
    }
    for (const [k, s] of batch) {
      const tenantId = k.slice(k.indexOf(" ") + 1);
      this.deps.log.warn({ event: "agent.refusals_summarized", ip: s.ip, refusals: s.count, reasons: s.reasons }, "agent refusals from one address over the audit budget; written as one summary");
      void audit(this.deps.store, {
        tenantId, type: "agent.refused", outcome: "failure", actor: { type: "anonymous" }, target: null, ip: s.ip,
        details: { summary: true, refusals: s.count, reasons: s.reasons, machine_ids: [...s.machines], since: new Date(s.first).toISOString(), until: new Date(now).toISOString() },
      }).catch(() => {});
    }
  }
}
/** The longest a refused socket stays open waiting for its audit row. */
const REFUSAL_AUDIT_WAIT_MS = 2_000;

/** Addresses tracked for the audit budget; past it, new ones share one. */
const MAX_TRACKED = 10_000;

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
