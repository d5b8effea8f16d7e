import { Packr } from "msgpackr";
import { z } from "zod";
import { unstorableAt } from "./storable.ts";

/**
 * The agent ↔ server protocol on `/ws/agent`: binary WebSocket frames, each one msgpack map
 * with a `t` (type) field, validated by the schemas below on both ends. docs/PROTOCOL.md
 * describes the handshake and close codes for anyone writing another agent.
 *
 *   agent  → hello { machine_id, key: "cak_…", agent_version, protocol: 1 }, as the first frame
 *            or, better, as the upgrade request's headers (HELLO_HEADERS)
 *   server → challenge { nonce: 32+ random bytes, heartbeat_ms }
 *   agent  → proof { signature: Ed25519 over the raw nonce bytes, inventory? }
 *   server → welcome { machine_id, heartbeat_ms, offline_after_ms, external_ip }
 *   agent  → heartbeat { seq } every heartbeat_ms;  status { inventory } on change (and on
 *            connect, if the proof did not carry it)
 *   server → closes with a code from CLOSE when it refuses or drops the agent
 */
export const PROTOCOL_VERSION = 1;
export const MAX_AGENT_FRAME = 4 * 1024 * 1024;
/**
 * The largest frame the server takes before its challenge. A hello at its schema's limits (a
 * 256-unit key and 64-unit agent_version, at most 3 UTF-8 bytes a unit, a uuid, the field
 * names) is under 1.1 KiB; anything bigger this early is not a hello.
 */
export const MAX_HELLO_FRAME = 2 * 1024;

/**
 * The hello as headers of the WebSocket upgrade request, for agents that can set them (the
 * bundled one does): the server then challenges as the socket opens, in the same TCP write as
 * its 101 response, and looks the key up while the agent signs. The handshake is two frames
 * instead of four: a fifth of a reconnect storm's CPU (docs/PERFORMANCE.md, Agents). The key
 * has a header of its own, not `Authorization`, which carries the login plane's credentials.
 */
export const HELLO_HEADERS = {
  machine_id: "tether-machine-id",
  key: "tether-agent-key",
  agent_version: "tether-agent-version",
  protocol: "tether-protocol",
} as const;

/** The hello an upgrade request presents in its headers, unchecked; null if it presents none (the hello comes as a frame). */
export function presentedHello(headers: { get(name: string): string | null }): Record<string, unknown> | null {
  const fields: Record<string, unknown> = { t: "hello" };
  let any = false;
  for (const [field, header] of Object.entries(HELLO_HEADERS)) {
    const value = headers.get(header);
    if (value === null) continue;
    any = true;
    fields[field] = field === "protocol" && /^[0-9]{1,9}$/.test(value) ? Number(value) : value;
  }
  return any ? fields : null;
}

/** The headers that present `hello` (the agent's side of presentedHello). */
export function helloHeaders(hello: Omit<Hello, "t">): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [field, header] of Object.entries(HELLO_HEADERS)) headers[header] = String(hello[field as keyof typeof HELLO_HEADERS]);
  return headers;
}

const bytes = z.instanceof(Uint8Array);

export const Hello = z.object({
  t: z.literal("hello"),
  machine_id: z.uuid(),
  key: z.string().min(1).max(256),
  agent_version: z.string().max(64),
  protocol: z.literal(PROTOCOL_VERSION),
});
export type Hello = z.infer<typeof Hello>;
export const Heartbeat = z.object({ t: z.literal("heartbeat"), seq: z.number().int().nonnegative() });

/** What the agent reports about its machine (SPEC M4). Every field optional: agents differ. */
export const Inventory = z.object({
  os: z.object({ name: z.string().max(128), version: z.string().max(128) }).partial(),
  kernel: z.string().max(256),
  cpu: z.object({ model: z.string().max(256), cores: z.number().int().nonnegative() }).partial(),
  memory_bytes: z.number().nonnegative(),
  disks: z.array(z.object({ mount: z.string().max(512), size_bytes: z.number().nonnegative(), free_bytes: z.number().nonnegative() }).partial()).max(64),
  hostname: z.string().max(256),
  private_ips: z.array(z.string().max(64)).max(64),
  macs: z.array(z.string().max(64)).max(64),
  users: z.array(z.string().max(128)).max(64),
  uptime_s: z.number().nonnegative(),
  timezone: z.string().max(64),
  agent_version: z.string().max(64),
  elevated: z.boolean(),
}).partial();
export type Inventory = z.infer<typeof Inventory>;

export const Status = z.object({ t: z.literal("status"), inventory: Inventory });
/**
 * The inventory may ride on the proof: the machine then comes online with it in one event,
 * instead of an online event and a status right after (half the journal rows and actor steps
 * of a reconnect storm). It counts only once the signature checks out.
 */
export const Proof = z.object({ t: z.literal("proof"), signature: bytes, inventory: Inventory.optional() });

export const AgentMessage = z.discriminatedUnion("t", [Hello, Proof, Heartbeat, Status]);
export type AgentMessage = z.infer<typeof AgentMessage>;

export const Challenge = z.object({ t: z.literal("challenge"), nonce: bytes, heartbeat_ms: z.number().int().positive() });
export const Welcome = z.object({
  t: z.literal("welcome"),
  machine_id: z.uuid(),
  heartbeat_ms: z.number().int().positive(),
  offline_after_ms: z.number().int().positive(),
  external_ip: z.string(),
});
export const ServerMessage = z.discriminatedUnion("t", [Challenge, Welcome]);
export type ServerMessage = z.infer<typeof ServerMessage>;

/** Close codes. 1000 is a normal close; 4xxx are Tether's, each a distinct refusal. */
export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  TOO_BIG: 1009,
  BAD_MESSAGE: 4000, // not a protocol frame, or out of order
  HANDSHAKE_TIMEOUT: 4001,
  UNKNOWN_KEY: 4002, // no such machine, or not a key of it
  WRONG_PLANE: 4003, // a login session, API token or enrollment key offered as the agent key
  KEY_REVOKED: 4004,
  BAD_SIGNATURE: 4005, // no proof, or a signature by another key
  MACHINE_PENDING: 4006,
  MACHINE_REMOVED: 4007,
  SUPERSEDED: 4008, // the same machine connected again
  SILENT: 4009, // no heartbeat within offline_after_ms
  SERVER_STOPPING: 4010,
  MACHINE_DISABLED: 4011, // an admin disabled the machine; enabling it lets the agent back in
  UNSUPPORTED_PROTOCOL: 4012, // a hello with another protocol version than PROTOCOL_VERSION
  BUSY: 4013, // too many agents waiting for a handshake slot, or no slot within the wait: retry later
  PROOF_TIMEOUT: 4014, // challenged, but no proof within the handshake time
} as const;

const packr = new Packr({ useRecords: false });

export function encode(message: AgentMessage | ServerMessage): Uint8Array {
  return packr.pack(message);
}

/** Decodes and validates one frame; null if it is not a valid message of `schema`, or carries text the database cannot store. */
export function decode<S extends z.ZodType>(schema: S, frame: Uint8Array): z.infer<S> | null {
  return validate(schema, unpack(frame));
}

/** The frame's msgpack value, unchecked; null if it is not msgpack. */
export function unpack(frame: Uint8Array): unknown {
  try {
    return packr.unpack(frame);
  } catch {
    return null;
  }
}

/** `value` if it is a valid message of `schema` and carries no text the database cannot store; else null. */
export function validate<S extends z.ZodType>(schema: S, value: unknown): z.infer<S> | null {
  const parsed = schema.safeParse(value);
  // Text the database cannot store is refused here, as a malformed frame is.
  return parsed.success && unstorableAt(parsed.data) === null ? parsed.data : null;
}
