import { z } from "zod";
import { Uuid } from "./accounts.ts";

/**
 * Rooms (R1–R5): request and response bodies, the subscription frames of `/ws/rooms/:id` and
 * the SSE stream, and their limits. Byte formats of signatures and sealed keys are in
 * room-crypto.ts and docs/PROTOCOL.md.
 */

/** A body's UTF-8 bytes; an encrypted body is base64url of iv + ciphertext + tag, a third longer. */
export const MAX_BODY_BYTES = 16 * 1024;
export const MAX_CIPHERTEXT_CHARS = Math.ceil(((MAX_BODY_BYTES + 12 + 16) * 4) / 3);
/**
 * A whole `POST /api/rooms/:id/messages` request: the largest body JSON-escaped (a control
 * character takes 6 bytes) plus the other fields. Larger: 413 before it is parsed.
 */
export const MAX_POST_REQUEST_BYTES = 128 * 1024;
export const MAX_MEMBERS = 1000;
/** A signed message's timestamp may differ from the server's clock by this much. */
export const SIGNED_TS_SKEW_MS = 5 * 60_000;

export const MessageId = z.string().regex(/^[0-9A-HJKMNP-TV-Z]{26}$/, "a ULID");
const Base64Url = z.string().regex(/^[A-Za-z0-9_-]*$/, "base64url without padding");
const ClientId = z.string().min(1).max(64).regex(/^[A-Za-z0-9._:-]+$/, "letters, digits, . _ : - only");

export const RoomPolicy = z.object({
  persist: z.boolean().default(true).describe("keep history in the database; false: live only, with a short in-memory resume window"),
  sign: z.boolean().default(false).describe("every message carries its sender's Ed25519 signature"),
  encrypt: z.boolean().default(false).describe("bodies are ciphertext under a room key sealed to each member's X25519 key"),
});
export type RoomPolicy = z.infer<typeof RoomPolicy>;

export const CreateRoomRequest = z.object({
  name: z.string().trim().min(1).max(128),
  policy: RoomPolicy.default({ persist: true, sign: false, encrypt: false }),
});

export const MemberRole = z.enum(["owner", "member"]);
export const RoomMember = z.object({
  member: z.string().describe("a user id, or person:<session id> for the person at an attended machine"),
  user_id: Uuid.nullable(),
  name: z.string(),
  role: MemberRole,
  added_at: z.string(),
});

export const Room = z.object({
  id: Uuid,
  name: z.string(),
  kind: z.enum(["team", "session"]),
  policy: z.object({ persist: z.boolean(), sign: z.boolean(), encrypt: z.boolean() }),
  epoch: z.number().int().describe("encrypted rooms: the key epoch new messages use"),
  keyed_epoch: z.number().int().describe("encrypted rooms: the newest epoch whose sealed keys are stored; posting waits until it equals epoch"),
  role: MemberRole.nullable().describe("the caller's role"),
  created_at: z.string(),
});
export const RoomWithMembers = Room.extend({ members: z.array(RoomMember) });

export const AddMemberRequest = z.object({
  user_id: Uuid,
  role: MemberRole.default("member"),
  sealed_key: Base64Url.max(200).optional().describe("encrypted rooms: the current epoch's room key sealed to the new member's X25519 key"),
});

export const SetKeysRequest = z.object({
  epoch: z.number().int().min(1),
  sealed: z.record(z.string().max(128), Base64Url.max(200)).describe("member → the epoch's room key sealed to that member; every current member"),
});

export const SealedKey = z.object({ epoch: z.number().int(), sealed: z.string() });

export const PostMessageRequest = z.object({
  body: z.string().min(1).max(MAX_CIPHERTEXT_CHARS),
  client_id: ClientId.optional().describe("posting again with the same client_id returns the stored message instead of a second one; required in signed rooms"),
  ts: z.number().int().optional().describe("signed rooms: the ms timestamp the signature covers"),
  signature: Base64Url.max(200).optional().describe("signed rooms: Ed25519 over the canonical message"),
  epoch: z.number().int().min(1).optional().describe("encrypted rooms: the key epoch of the body"),
});
export type PostMessageRequest = z.infer<typeof PostMessageRequest>;

export const RoomMessage = z.object({
  id: MessageId,
  room_id: Uuid,
  sender: z.string(),
  sender_name: z.string(),
  client_id: z.string().nullable(),
  body: z.string(),
  epoch: z.number().int().nullable(),
  ts: z.number().int(),
  signature: z.string().nullable(),
  sign_key: z.string().nullable(),
});
export type RoomMessage = z.infer<typeof RoomMessage>;

export const MessagesQuery = z.object({
  after: MessageId.optional(),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

export const UserKeysRequest = z.object({
  ed25519: Base64Url.length(43).optional().describe("raw 32-byte Ed25519 public key, base64url"),
  x25519: Base64Url.length(43).optional().describe("raw 32-byte X25519 public key, base64url"),
});
export const UserKeys = z.object({ user_id: Uuid, ed25519: z.string().nullable(), x25519: z.string().nullable() });

/** `/ws/rooms/:id` server → subscriber (JSON text frames). The SSE stream carries the same as events. */
export const RoomFrame = z.discriminatedUnion("t", [
  z.object({ t: z.literal("message"), message: RoomMessage }),
  z.object({ t: z.literal("live"), after: MessageId.nullable().describe("history is done; everything from here is live") }),
  z.object({ t: z.literal("epoch"), epoch: z.number().int(), keyed_epoch: z.number().int() }),
]);
export type RoomFrame = z.infer<typeof RoomFrame>;

/** Why a subscription ends (WebSocket close codes; the SSE stream's last `event: closed`). */
export const ROOM_CLOSE = {
  SLOW_CONSUMER: 4300,
  NOT_A_MEMBER: 4301,
  ROOM_GONE: 4302,
  SERVER_STOPPING: 4303,
  /** The subscriber's credential was revoked (logout, token revoked, password reset) or its user disabled. */
  ACCESS_REVOKED: 4304,
} as const;
export const ROOM_CLOSE_REASON: Record<number, string> = {
  4300: "slow_consumer",
  4301: "not_a_member",
  4302: "room_gone",
  4303: "server_stopping",
  4304: "access_revoked",
};
