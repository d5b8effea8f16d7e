import { Elysia } from "elysia";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import type { Principal } from "../../auth/principal.ts";
import { Uuid } from "../../protocol/accounts.ts";
import { isPublicKey, isSealedKey } from "../../protocol/room-crypto.ts";
import {
  AddMemberRequest, CreateRoomRequest, MAX_BODY_BYTES, MAX_CIPHERTEXT_CHARS, MAX_POST_REQUEST_BYTES, MessageId, MessagesQuery, PostMessageRequest, Room, RoomMessage, RoomWithMembers,
  SealedKey, SetKeysRequest, UserKeys, UserKeysRequest,
} from "../../protocol/rooms.ts";
import { RoomError } from "../../rooms/service.ts";
import { getRoom, listRooms, messageExists, messagesAfter, publicRoom, roomMembers, sealedKeysOf, setUserKeys, storeSealedKeys, userKeys } from "../../rooms/rooms.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { roomStream, streamAuth } from "./room-stream.ts";

const tags = ["rooms"];
const IdParams = z.object({ id: Uuid });

/** RoomError (from the rooms layer) as the API's error envelope. */
async function guard<T>(work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if (err instanceof RoomError) throw new HttpError(err.status, err.code, err.message);
    throw err;
  }
}

const REPLY_STATUS: Record<string, number> = {
  ROOM_NOT_FOUND: 404, NOT_A_MEMBER: 404, ROOM_FULL: 409, SEALED_KEY_REQUIRED: 400, LAST_OWNER: 409,
  ROOM_NOT_ENCRYPTED: 409, WRONG_EPOCH: 409, EPOCH_ALREADY_KEYED: 409, KEYS_MUST_COVER_MEMBERS: 400,
};
/**
 * End users take part in their sessions' rooms and nothing more: who is in those rooms follows
 * from the session and the end user's grant (a room created before this rule may still list the
 * end user as an owner), so they neither add nor remove members, themselves included.
 */
const endUserRefused = () => new HttpError(403, "FORBIDDEN", "end users do not add or remove room members");
const refused = (code = "ROOM_NOT_FOUND") => new HttpError(REPLY_STATUS[code] ?? 409, code, code.toLowerCase().replaceAll("_", " "));

/**
 * Rooms (R1–R5): team rooms and sessions' rooms, members, sealed keys, messages, and the
 * history-then-live stream (SSE here; WebSocket in ws/rooms.ts). Only members read or post.
 */
export const roomRoutes = (deps: AppDeps) => {
  const rooms = deps.rooms;
  const withMembers = async (me: Principal, id: string) => {
    const row = await getRoom(deps.store, me.tenantId, me.userId, id);
    if (!row) throw new HttpError(404, "ROOM_NOT_FOUND", "no such room");
    return { ...publicRoom(row), members: await roomMembers(deps.store, id) };
  };

  const missingKeys = async (roomId: string, epoch: number, members: string[]) => {
    const [row] = await deps.store.query<{ n: number }>("select count(*)::int as n from room_keys where room_id = $1 and epoch = $2", [roomId, epoch]);
    return (row?.n ?? 0) < members.length;
  };

  return new Elysia({ name: "room-routes" })
    .use(requestContext(deps))
    .post("/api/rooms", async (ctx) => {
      const me = await authorize(ctx, "rooms:write");
      if (me.role === "end_user") throw new HttpError(403, "FORBIDDEN", "end users take part in their sessions' rooms; they do not create rooms");
      const id = crypto.randomUUID();
      const reply = await rooms.ask(id, {
        type: "room.create", tenant_id: me.tenantId, name: ctx.body.name, kind: "team", policy: ctx.body.policy, created_by: me.userId,
        members: [{ member: me.userId, user_id: me.userId, name: me.username, role: "owner" }],
      });
      if (!reply.ok) throw refused(reply.code);
      await audit(deps.store, { tenantId: me.tenantId, type: "room.requested", actor: actorOf(me), target: { type: "room", id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { ...ctx.body.policy } });
      ctx.set.status = 201;
      return withMembers(me, id);
    }, { body: CreateRoomRequest, response: { 201: RoomWithMembers }, detail: { tags, summary: "Create a team room; the caller is its owner" } })

    .get("/api/rooms", async (ctx) => {
      const me = await authorize(ctx, "rooms:read");
      return { rooms: (await listRooms(deps.store, me.tenantId, me.userId, ctx.query.kind)).map(publicRoom) };
    }, { query: z.object({ kind: z.enum(["team", "session"]).optional() }), response: { 200: z.object({ rooms: z.array(Room) }) }, detail: { tags, summary: "The rooms the caller is a member of" } })

    .get("/api/rooms/:id", async (ctx) => {
      const me = await authorize(ctx, "rooms:read");
      await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      await rooms.writes.settled(ctx.params.id);
      return withMembers(me, ctx.params.id);
    }, { params: IdParams, response: { 200: RoomWithMembers }, detail: { tags, summary: "A room with its members" } })

    .post("/api/rooms/:id/members", async (ctx) => {
      const me = await authorize(ctx, "rooms:write");
      if (me.role === "end_user") throw endUserRefused();
      const room = await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      if (room.members[me.userId]?.role !== "owner") throw new HttpError(403, "NOT_AN_OWNER", "only a room's owners add members");
      const [user] = await deps.store.query<{ id: string; username: string }>("select id, username from users where id = $1 and tenant_id = $2 and disabled_at is null", [ctx.body.user_id, me.tenantId]);
      if (!user) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
      if (room.policy.encrypt && room.keyedEpoch === room.epoch) {
        if (!ctx.body.sealed_key) throw new HttpError(400, "SEALED_KEY_REQUIRED", "an encrypted room's new member needs the room key sealed to their X25519 key");
        if (!isSealedKey(ctx.body.sealed_key)) throw new HttpError(400, "MALFORMED_SEALED_KEY", "a sealed key is base64url of 92 bytes");
        if (!(await userKeys(deps.store, user.id)).x25519) throw new HttpError(409, "NO_KEX_KEY", "the user has not registered an X25519 public key");
      }
      const reply = await rooms.ask(room.id, { type: "member.add", member: user.id, user_id: user.id, name: user.username, role: ctx.body.role, by: me.userId, sealed: ctx.body.sealed_key });
      if (!reply.ok) throw refused(reply.code);
      ctx.set.status = reply.existed ? 200 : 201;
      return withMembers(me, room.id);
    }, { params: IdParams, body: AddMemberRequest, response: { 200: RoomWithMembers, 201: RoomWithMembers }, detail: { tags, summary: "Add a member (owners; encrypted rooms: with the room key sealed to them)" } })

    .delete("/api/rooms/:id/members/:member", async (ctx) => {
      const me = await authorize(ctx, "rooms:write");
      if (me.role === "end_user") throw endUserRefused();
      const room = await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      if (ctx.params.member !== me.userId && room.members[me.userId]?.role !== "owner") throw new HttpError(403, "NOT_AN_OWNER", "only a room's owners remove others; anyone may leave");
      const reply = await rooms.ask(room.id, { type: "member.remove", member: ctx.params.member, by: me.userId });
      if (!reply.ok) throw refused(reply.code);
      ctx.set.status = 204;
    }, { params: z.object({ id: Uuid, member: z.string().min(1).max(128) }), detail: { tags, summary: "Remove a member, or leave (encrypted rooms move to a new key epoch)" } })

    .put("/api/rooms/:id/keys", async (ctx) => {
      const me = await authorize(ctx, "rooms:write");
      const room = await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      for (const sealed of Object.values(ctx.body.sealed)) if (!isSealedKey(sealed)) throw new HttpError(400, "MALFORMED_SEALED_KEY", "a sealed key is base64url of 92 bytes");
      const reply = await rooms.ask(room.id, { type: "keys.set", epoch: ctx.body.epoch, sealed: ctx.body.sealed, by: me.userId });
      if (!reply.ok && reply.code === "EPOCH_ALREADY_KEYED" && ctx.body.epoch === room.epoch && (await missingKeys(room.id, room.epoch, Object.keys(room.members)))) {
        // The actor took the epoch but its sealed keys were never stored (the effect failed, or
        // the process died in between): the same upload, covering every member, repairs it.
        const want = Object.keys(room.members).sort();
        const got = Object.keys(ctx.body.sealed).sort();
        if (want.length !== got.length || want.some((m, i) => m !== got[i])) throw refused("KEYS_MUST_COVER_MEMBERS");
        await storeSealedKeys(deps.store, room.id, room.epoch, ctx.body.sealed);
        return withMembers(me, room.id);
      }
      if (!reply.ok) throw refused(reply.code);
      return withMembers(me, room.id);
    }, { params: IdParams, body: SetKeysRequest, response: { 200: RoomWithMembers }, detail: { tags, summary: "Store the epoch's room key sealed to every member (encrypted rooms; the server cannot open it)" } })

    .get("/api/rooms/:id/keys", async (ctx) => {
      const me = await authorize(ctx, "rooms:read");
      const room = await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      await rooms.writes.settled(room.id);
      return { keys: await sealedKeysOf(deps.store, room.id, me.userId) };
    }, { params: IdParams, response: { 200: z.object({ keys: z.array(SealedKey) }) }, detail: { tags, summary: "The caller's sealed copies of the room key, per epoch" } })

    .post("/api/rooms/:id/messages", async (ctx) => {
      const me = await authorize(ctx, "rooms:write");
      const room = await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      try {
        const { message, duplicate } = await rooms.post(room, { member: me.userId, name: me.username }, ctx.body);
        ctx.set.status = duplicate ? 200 : 201;
        return message;
      } catch (err) {
        if (err instanceof RoomError && (err.code === "BAD_SIGNATURE" || err.code === "STALE_TIMESTAMP")) {
          await audit(deps.store, { tenantId: me.tenantId, type: "room.message_refused", outcome: "failure", actor: actorOf(me), target: { type: "room", id: room.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { reason: err.code.toLowerCase() } });
        }
        throw err instanceof RoomError ? new HttpError(err.status, err.code, err.message) : err;
      }
    }, { params: IdParams, body: PostMessageRequest, parse: ({ request }) => parseMessageRequest(request), transform: ({ body }) => refuseTooLarge(body), response: { 200: RoomMessage, 201: RoomMessage }, detail: { tags, summary: "Post a message (201; 200 with the stored one when client_id was seen before)" } })

    .get("/api/rooms/:id/messages", async (ctx) => {
      const me = await authorize(ctx, "rooms:read");
      const room = await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      if (!room.policy.persist) return { messages: [] };
      return { messages: await messagesAfter(deps.store, room.id, ctx.query.after ?? null, ctx.query.limit) };
    }, { params: IdParams, query: MessagesQuery, response: { 200: z.object({ messages: z.array(RoomMessage) }) }, detail: { tags, summary: "History, oldest first, after a message id" } })

    .get("/api/rooms/:id/stream", async (ctx) => {
      const me = await authorize(ctx, "rooms:read");
      const room = await guard(rooms.forMember(me.tenantId, ctx.params.id, me.userId));
      const after = await resumePoint(deps, room.id, room.policy.persist, ctx.query.after ?? ctx.request.headers.get("last-event-id"));
      return roomStream(deps, room, me.userId, after, streamAuth(me, ctx.credential?.secret));
    }, {
      params: IdParams,
      query: z.object({ after: z.string().max(64).optional() }),
      detail: { tags, summary: "Server-Sent Events: history after Last-Event-ID (or ?after=), then live; `id:` on every message" },
    })

    .put("/api/me/keys", async (ctx) => {
      const me = await authorize(ctx, "rooms:write");
      for (const key of [ctx.body.ed25519, ctx.body.x25519]) if (key !== undefined && !isPublicKey(key)) throw new HttpError(400, "MALFORMED_PUBLIC_KEY", "a public key is base64url of 32 bytes");
      if (!ctx.body.ed25519 && !ctx.body.x25519) throw new HttpError(400, "VALIDATION_FAILED", "body: ed25519 or x25519 is required");
      await setUserKeys(deps.store, me.userId, ctx.body);
      await audit(deps.store, { tenantId: me.tenantId, type: "user.keys_registered", actor: actorOf(me), target: { type: "user", id: me.userId }, ip: ctx.ip, correlationId: ctx.correlationId, details: { ed25519: Boolean(ctx.body.ed25519), x25519: Boolean(ctx.body.x25519) } });
      return { user_id: me.userId, ...(await userKeys(deps.store, me.userId)) };
    }, { body: UserKeysRequest, response: { 200: UserKeys }, detail: { tags, summary: "Register the caller's public keys: Ed25519 (signed rooms), X25519 (encrypted rooms)" } })

    .get("/api/users/:id/keys", async (ctx) => {
      const me = await authorize(ctx, "rooms:read");
      const [user] = await deps.store.query<{ id: string }>("select id from users where id = $1 and tenant_id = $2", [ctx.params.id, me.tenantId]);
      if (!user) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
      return { user_id: user.id, ...(await userKeys(deps.store, user.id)) };
    }, { params: IdParams, response: { 200: UserKeys }, detail: { tags, summary: "A user's public keys, to seal a room key to them or verify their signatures" } });
};

const tooLarge = () => new HttpError(413, "BODY_TOO_LARGE", `a message body is at most ${MAX_BODY_BYTES} bytes (encrypted: ${MAX_CIPHERTEXT_CHARS} characters of ciphertext)`);

/** What parseMessageRequest hands on for an oversized request (an error thrown in `parse` would become a 400 PARSE). */
const TOO_LARGE = Symbol("too large");

/**
 * A message post's JSON, read up to MAX_POST_REQUEST_BYTES: a larger request is refused as it
 * streams in, not buffered whole.
 */
async function parseMessageRequest(request: Request): Promise<unknown> {
  if (Number(request.headers.get("content-length") ?? 0) > MAX_POST_REQUEST_BYTES) return { [TOO_LARGE]: true };
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = request.body?.getReader();
  for (;;) {
    const chunk = reader ? await reader.read() : { done: true as const, value: undefined };
    if (chunk.done) break;
    size += chunk.value.byteLength;
    if (size > MAX_POST_REQUEST_BYTES) {
      await reader!.cancel().catch(() => {});
      return { [TOO_LARGE]: true };
    }
    chunks.push(chunk.value);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8")); // a syntax error: 400 BAD_REQUEST (PARSE)
}

/** Before validation: an oversized request, or an over-long `body`, is 413 like any other oversized body (not 400). */
function refuseTooLarge(parsed: unknown): void {
  if (parsed === null || typeof parsed !== "object") return;
  const body = (parsed as { body?: unknown; [TOO_LARGE]?: true });
  if (body[TOO_LARGE] || (typeof body.body === "string" && body.body.length > MAX_CIPHERTEXT_CHARS)) throw tooLarge();
}

/**
 * Where a stream resumes: after a message of this room. Not a ULID: 400. A ULID that is not a
 * message of this room (forged, or of another room): 404, so a client never silently skips.
 */
export async function resumePoint(deps: AppDeps, roomId: string, persist: boolean, given: string | null | undefined): Promise<string | null> {
  if (given === undefined || given === null || given === "") return null;
  if (!MessageId.safeParse(given).success) throw new HttpError(400, "INVALID_EVENT_ID", "Last-Event-ID / after must be a message id (a ULID)");
  const known = persist ? await messageExists(deps.store, roomId, given) : deps.rooms.hub.hasRecent(roomId, given);
  if (!known) throw new HttpError(404, "EVENT_NOT_FOUND", "no message of this room has that id; subscribe without it to start from the beginning");
  return given;
}
