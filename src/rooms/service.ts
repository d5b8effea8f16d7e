import type { Serial } from "../actors/serial.ts";
import type { ActorSystem } from "../actors/system.ts";
import { isCiphertext, verifyMessage } from "../protocol/room-crypto.ts";
import { MAX_BODY_BYTES, ROOM_CLOSE, SIGNED_TS_SKEW_MS, type PostMessageRequest, type RoomMessage } from "../protocol/rooms.ts";
import type { Queryable } from "../store/store.ts";
import type { RoomHub, Subscriber } from "./hub.ts";
import { Refused, type Appended, type MessageLog } from "./message-log.ts";
import type { NewMember, RoomContext } from "./room.ts";
import { lastMessages, userKeys } from "./rooms.ts";

/** Why a post or a room operation was refused: an HTTP status and a stable code. */
export class RoomError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

export interface Poster {
  /** A user id, or person:<session id>. */
  member: string;
  name: string;
}

const encoder = new TextEncoder();
export const personOf = (sessionId: string) => `person:${sessionId}`;

/**
 * What routes, the relay and sessions do with rooms: read a room's live state from its actor,
 * check and append messages, open a session's room. Policy checks (membership, signatures,
 * ciphertext shape, epochs) happen here, before anything is written.
 */
export class Rooms {
  constructor(
    private readonly system: ActorSystem,
    private readonly db: Queryable,
    readonly hub: RoomHub,
    private readonly log: MessageLog,
    /** The rooms rows' writes, in event order (await `settled(id)` to read your own changes). */
    readonly writes: Serial,
  ) {
    hub.fence = () => log.settled();
  }

  /** The room as its actor has it now; null if there is no such room in the tenant. */
  async context(tenantId: string, id: string): Promise<RoomContext | null> {
    const view = await this.system.inspect(`room/${id}`);
    const c = view.context as RoomContext;
    if (view.value === "new" || c.tenantId !== tenantId) return null;
    return c;
  }

  /** The room, if `member` belongs to it: 404 for no room, 403 for a non-member. */
  async forMember(tenantId: string, id: string, member: string): Promise<RoomContext> {
    const c = await this.context(tenantId, id);
    if (!c) throw new RoomError(404, "ROOM_NOT_FOUND", "no such room");
    if (!c.members[member]) throw new RoomError(403, "NOT_A_MEMBER", "only the room's members read or post in it");
    return c;
  }

  /**
   * Subscribes `sub` and then checks membership again: a removal that landed between the
   * route's check and this registration did not see the new subscriber, so it is closed here
   * (a removal after the registration closes it through the hub).
   */
  async subscribe(room: RoomContext, sub: Subscriber, after: string | null): Promise<void> {
    const reading = this.hub.subscribe(room.id, sub, after, room.policy.persist);
    const now = await this.context(room.tenantId ?? "", room.id).catch(() => null);
    if (!now?.members[sub.member]) this.hub.end(room.id, sub, ROOM_CLOSE.NOT_A_MEMBER, "not_a_member");
    await reading;
  }

  async ask(id: string, event: Record<string, unknown> & { type: string }): Promise<{ ok: boolean; code?: string; epoch?: number; existed?: boolean }> {
    const { reply } = await this.system.ask<{ ok: boolean; code?: string; epoch?: number; existed?: boolean }>(`room/${id}`, event);
    await this.writes.settled(id);
    // A removal is answered only once the member's posts still in flight are committed (they
    // were checked before it) or refused at their insert (rooms.ts, insertIfAllowed).
    if (event.type === "member.remove" && reply?.ok) await this.log.settled();
    return reply ?? { ok: false, code: "ROOM_NOT_FOUND" };
  }

  /** Checks a post against the room's policy, then appends it; resolves once it is committed. */
  async post(room: RoomContext, from: Poster, req: PostMessageRequest): Promise<Appended> {
    let epoch: number | null = null;
    if (room.policy.encrypt) {
      if (req.epoch === undefined) throw new RoomError(400, "EPOCH_REQUIRED", "an encrypted room's message names the key epoch of its body");
      if (req.epoch !== room.epoch) throw new RoomError(409, "WRONG_EPOCH", `the room's key epoch is ${room.epoch}`);
      if (room.keyedEpoch !== room.epoch) throw new RoomError(409, "ROOM_KEY_PENDING", `the room key of epoch ${room.epoch} has not been shared yet (PUT /api/rooms/${room.id}/keys)`);
      if (!isCiphertext(req.body)) throw new RoomError(400, "MALFORMED_CIPHERTEXT", "an encrypted room takes base64url ciphertext (iv + ciphertext + tag)");
      epoch = req.epoch;
    } else if (encoder.encode(req.body).byteLength > MAX_BODY_BYTES) {
      throw new RoomError(413, "BODY_TOO_LARGE", `a message body is at most ${MAX_BODY_BYTES} bytes`);
    }
    let ts = Date.now();
    let signature: string | null = null;
    let signKey: string | null = null;
    if (room.policy.sign) {
      if (!req.client_id || req.ts === undefined || !req.signature) throw new RoomError(400, "SIGNATURE_REQUIRED", "a signed room's message carries client_id, ts and signature");
      if (Math.abs(req.ts - ts) > SIGNED_TS_SKEW_MS) throw new RoomError(400, "STALE_TIMESTAMP", "the signed timestamp is more than 5 minutes from the server's clock");
      signKey = (await userKeys(this.db, from.member)).ed25519;
      if (!signKey) throw new RoomError(409, "NO_SIGNING_KEY", "register an Ed25519 public key (PUT /api/me/keys) before posting in a signed room");
      const fields = { room_id: room.id, client_id: req.client_id, sender: from.member, body: req.body, ts: req.ts };
      if (!(await verifyMessage(signKey, fields, req.signature))) throw new RoomError(400, "BAD_SIGNATURE", "the signature does not verify with the sender's registered key");
      ts = req.ts;
      signature = req.signature;
      if (!room.policy.persist) {
        // Nothing checks a room without history at commit: look again after the awaits above.
        const now = await this.context(room.tenantId ?? "", room.id);
        if (!now?.members[from.member]) throw new RoomError(403, "NOT_A_MEMBER", "only the room's members read or post in it");
        if (room.policy.encrypt && now.epoch !== epoch) throw new RoomError(409, "WRONG_EPOCH", `the room's key epoch is ${now.epoch}`);
      }
    }
    // The insert checks membership and epoch against the rooms rows (message-log.ts): let the
    // rows catch up with the actor this post was checked against (a member just added, its row
    // still being written). Nothing pending: no wait.
    if (room.policy.persist) await this.writes.settled(room.id);
    try {
      return await this.log.append(room.id, {
        room_id: room.id, sender: from.member, sender_name: from.name, client_id: req.client_id ?? null,
        body: req.body, epoch, ts, signature, sign_key: signKey,
      }, room.policy.persist);
    } catch (err) {
      // Checked above against the room as it was; a removal or a new epoch got in before the insert.
      if (err instanceof Refused) {
        throw err.code === "NOT_A_MEMBER"
          ? new RoomError(403, "NOT_A_MEMBER", "only the room's members read or post in it (removed while this message was being written)")
          : new RoomError(409, "WRONG_EPOCH", "the room moved to a new key epoch while this message was being written");
      }
      throw err;
    }
  }

  /** A session's room (same id as the session), with its technician as owner. Idempotent. */
  async openSessionRoom(s: { sessionId: string; tenantId: string; name: string; owner: NewMember; members?: NewMember[] }): Promise<void> {
    const reply = await this.ask(s.sessionId, {
      type: "room.create", tenant_id: s.tenantId, name: s.name, kind: "session", created_by: s.owner.user_id,
      policy: { persist: true, sign: false, encrypt: false }, members: [s.owner, ...(s.members ?? [])],
    });
    if (!reply.ok) throw new Error(`session ${s.sessionId}: its room could not be opened (${reply.code})`);
  }

  /** Chat in a session (the relay's viewers and the person at the machine) goes through its room. */
  async sessionChat(sessionId: string, tenantId: string, from: Poster, text: string): Promise<RoomMessage | null> {
    let room = await this.context(tenantId, sessionId);
    // The relay only carries chat of admitted viewers and of the session's own agent, so a
    // poster missing from the room (its join still being written, or a room lost to a crash
    // before its effect ran) is added rather than refused; one removed from it is not.
    if (!room) {
      const [s] = await this.db.query<{ kind: string; created_by: string | null; technician: string }>(
        "select kind, created_by, technician from sessions where id = $1 and tenant_id = $2", [sessionId, tenantId]);
      if (!s) return null;
      await this.openSessionRoom({
        sessionId, tenantId, name: `Session (${s.kind})`,
        // As sessionEffects opens it: an end user's own session room has no owner (see effects.ts).
        owner: { member: s.created_by ?? personOf(sessionId), user_id: s.created_by, name: s.technician, role: s.kind === "end_user" ? "member" : "owner" },
        members: s.kind === "attended" ? [{ member: personOf(sessionId), user_id: null, name: "the person at the machine", role: "member" }] : [],
      });
      room = await this.context(tenantId, sessionId);
    }
    if (room && !room.members[from.member]) {
      const isPerson = from.member === personOf(sessionId);
      await this.ask(sessionId, { type: "member.add", member: from.member, user_id: isPerson ? null : from.member, name: from.name, role: "member", by: null, unless_removed: true });
      room = await this.context(tenantId, sessionId);
    }
    if (!room) return null;
    // Membership is checked where the message is written (insertIfAllowed): a poster removed
    // before or while it is written is refused there, 403 NOT_A_MEMBER.
    return (await this.post(room, from, { body: text })).message;
  }

  /**
   * A session's chat so far, for a viewer who joins or rejoins: its room's latest `limit`
   * messages. The session was checked against the viewer's tenant before this is asked.
   */
  async sessionChatHistory(sessionId: string, limit: number): Promise<RoomMessage[]> {
    return lastMessages(this.db, sessionId, limit);
  }
}
