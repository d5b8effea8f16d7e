import { iso } from "../machines/rows.ts";
import type { RoomMessage } from "../protocol/rooms.ts";
import type { Queryable } from "../store/store.ts";
import type { MemberEntry, MemberRole } from "./room.ts";

/**
 * Room rows: the room actors' projection (rooms, members, sealed keys) and the message history
 * the message log writes. Every read is scoped to the caller's tenant.
 */
export interface RoomRow {
  id: string;
  tenant_id: string;
  name: string;
  kind: "team" | "session";
  persist: boolean;
  sign: boolean;
  encrypt: boolean;
  epoch: number;
  keyed_epoch: number;
  created_at: Date | string;
  role: MemberRole | null;
}

export function publicRoom(r: RoomRow) {
  return {
    id: r.id, name: r.name, kind: r.kind, policy: { persist: r.persist, sign: r.sign, encrypt: r.encrypt },
    epoch: r.epoch, keyed_epoch: r.keyed_epoch, role: r.role, created_at: iso(r.created_at),
  };
}

const SELECT = `select r.id, r.tenant_id, r.name, r.kind, r.persist, r.sign, r.encrypt, r.epoch, r.keyed_epoch, r.created_at, m.role
  from rooms r left join room_members m on m.room_id = r.id and m.member = $2`;

/** The room, with the caller's role in it (null: not a member). */
export async function getRoom(db: Queryable, tenantId: string, member: string, id: string): Promise<RoomRow | null> {
  const [row] = await db.query<RoomRow>(`${SELECT} where r.id = $1 and r.tenant_id = $3`, [id, member, tenantId]);
  return row ?? null;
}

/** The rooms `member` belongs to, newest first. */
export async function listRooms(db: Queryable, tenantId: string, member: string, kind?: "team" | "session"): Promise<RoomRow[]> {
  return db.query<RoomRow>(
    `select r.id, r.tenant_id, r.name, r.kind, r.persist, r.sign, r.encrypt, r.epoch, r.keyed_epoch, r.created_at, m.role
       from room_members m join rooms r on r.id = m.room_id
      where m.member = $1 and r.tenant_id = $2 and ($3::text is null or r.kind = $3)
      order by r.created_at desc, r.id limit 500`,
    [member, tenantId, kind ?? null]);
}

export async function roomMembers(db: Queryable, roomId: string) {
  const rows = await db.query<{ member: string; user_id: string | null; name: string; role: MemberRole; added_at: Date | string }>(
    "select member, user_id, name, role, added_at from room_members where room_id = $1 order by added_at, member", [roomId]);
  return rows.map((r) => ({ ...r, added_at: iso(r.added_at) }));
}

export async function memberIds(db: Queryable, roomId: string): Promise<string[]> {
  return (await db.query<{ member: string }>("select member from room_members where room_id = $1", [roomId])).map((r) => r.member);
}

/** Writes the actor's view of the room: the row, and its members replaced whole (at most MAX_MEMBERS). */
export async function projectRoom(db: Queryable & { transaction?: <T>(fn: (tx: Queryable) => Promise<T>) => Promise<T> }, p: {
  room_id: string; tenant_id: string; name: string; kind: string; policy: { persist: boolean; sign: boolean; encrypt: boolean };
  epoch: number; keyed_epoch: number; created_by: string | null; created_at: number; members: Record<string, MemberEntry>;
}) {
  const write = async (tx: Queryable) => {
    await tx.query(
      `insert into rooms (id, tenant_id, name, kind, persist, sign, encrypt, epoch, keyed_epoch, created_by, created_at)
       values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11::bigint / 1000.0))
       on conflict (id) do update set name = excluded.name, epoch = excluded.epoch, keyed_epoch = excluded.keyed_epoch`,
      [p.room_id, p.tenant_id, p.name, p.kind, p.policy.persist, p.policy.sign, p.policy.encrypt, p.epoch, p.keyed_epoch, p.created_by, p.created_at]);
    const entries = Object.entries(p.members);
    await tx.query("delete from room_members where room_id = $1", [p.room_id]);
    if (entries.length === 0) return;
    await tx.query(
      `insert into room_members (room_id, member, user_id, name, role, added_at)
       select $1, m.member, m.user_id, m.name, m.role, to_timestamp(m.since / 1000.0)
         from jsonb_to_recordset($2::text::jsonb) as m(member text, user_id uuid, name text, role text, since bigint)`,
      [p.room_id, JSON.stringify(entries.map(([member, e]) => ({ member, ...e })))]);
  };
  if (db.transaction) await db.transaction(write);
  else await write(db);
}

export async function storeSealedKeys(db: Queryable, roomId: string, epoch: number, sealed: Record<string, string>) {
  await db.query(
    `insert into room_keys (room_id, epoch, member, sealed)
     select $1, $2, k.key, k.value from jsonb_each_text($3::text::jsonb) as k
     on conflict do nothing`,
    [roomId, epoch, JSON.stringify(sealed)]);
}

export async function sealedKeysOf(db: Queryable, roomId: string, member: string) {
  return db.query<{ epoch: number; sealed: string }>("select epoch, sealed from room_keys where room_id = $1 and member = $2 order by epoch", [roomId, member]);
}

// ---- messages ----------------------------------------------------------------------------

const MESSAGE_COLUMNS = "id, room_id, sender, sender_name, client_id, body, epoch, ts, signature, sign_key";

export async function messagesAfter(db: Queryable, roomId: string, after: string | null, limit: number): Promise<RoomMessage[]> {
  return db.query<RoomMessage>(
    `select ${MESSAGE_COLUMNS} from room_messages where room_id = $1 and ($2::text is null or id > $2) order by id limit $3`,
    [roomId, after, limit]);
}

/** A room's latest `limit` messages, oldest first. */
export async function lastMessages(db: Queryable, roomId: string, limit: number): Promise<RoomMessage[]> {
  const rows = await db.query<RoomMessage>(`select ${MESSAGE_COLUMNS} from room_messages where room_id = $1 order by id desc limit $2`, [roomId, limit]);
  return rows.reverse();
}

export async function messageExists(db: Queryable, roomId: string, id: string): Promise<boolean> {
  return (await db.query("select 1 from room_messages where room_id = $1 and id = $2", [roomId, id])).length > 0;
}

export async function lastMessageId(db: Queryable, roomId: string): Promise<string | null> {
  const [row] = await db.query<{ id: string | null }>("select max(id) as id from room_messages where room_id = $1", [roomId]);
  return row?.id ?? null;
}

/**
 * Inserts the rows whose sender is still in room_members and, for an encrypted room's message,
 * whose epoch is still the room's: one statement for the whole batch, each row with its own
 * condition. A refused row is skipped and named; the others commit.
 *
 * Why this closes the removal race (a post checked against the actor's context, then a removal,
 * then the post's insert): the removal's projection (room_members without the member, the
 * rooms row at the next epoch) is committed before the removal is answered (Rooms.ask waits for
 * it), and then the removal waits for the insert in flight (`settled()`). An insert whose
 * statement began after that commit sees it and refuses the row. One that began before it runs
 * on a snapshot from before the removal: it is ordered before the removal (it read nothing the
 * removal wrote, the removal reads no message), and the removal is answered only after it has
 * committed and been published. PGlite runs one statement at a time, PostgreSQL reads committed
 * rows per statement: the same on both, without a lock or a round trip per message.
 */
export async function insertIfAllowed(db: Queryable, rows: RoomMessage[]): Promise<Map<string, "written" | "NOT_A_MEMBER" | "WRONG_EPOCH" | "skipped">> {
  const result = await db.query<{ id: string; member: boolean; epoch_ok: boolean; written: boolean }>(
    `with m as (
       select m.*,
              exists (select 1 from room_members rm where rm.room_id = m.room_id and rm.member = m.sender) as member,
              (m.epoch is null or exists (select 1 from rooms r where r.id = m.room_id and r.epoch = m.epoch)) as epoch_ok
         from jsonb_to_recordset($1::text::jsonb) as m(id text, room_id uuid, sender text, sender_name text, client_id text, body text, epoch integer, ts bigint, signature text, sign_key text)
     ), written as (
       insert into room_messages (${MESSAGE_COLUMNS})
       select id, room_id, sender, sender_name, client_id, body, epoch, ts, signature, sign_key from m where member and epoch_ok
       on conflict do nothing
       returning id
     )
     select m.id, m.member, m.epoch_ok, w.id is not null as written from m left join written w on w.id = m.id`,
    [JSON.stringify(rows)]);
  return new Map(result.map((r) => [r.id, r.written ? "written" : !r.member ? "NOT_A_MEMBER" : !r.epoch_ok ? "WRONG_EPOCH" : "skipped"]));
}

export async function messageByClientId(db: Queryable, roomId: string, sender: string, clientId: string): Promise<RoomMessage | null> {
  const [row] = await db.query<RoomMessage>(`select ${MESSAGE_COLUMNS} from room_messages where room_id = $1 and sender = $2 and client_id = $3`, [roomId, sender, clientId]);
  return row ?? null;
}

// ---- users' public keys ------------------------------------------------------------------

export async function setUserKeys(db: Queryable, userId: string, keys: { ed25519?: string; x25519?: string }) {
  for (const kind of ["ed25519", "x25519"] as const) {
    const key = keys[kind];
    if (!key) continue;
    await db.query(
      `insert into user_keys (user_id, kind, public_key) values ($1, $2, $3)
       on conflict (user_id, kind) do update set public_key = excluded.public_key, created_at = now()`, [userId, kind, key]);
  }
}

export async function userKeys(db: Queryable, userId: string): Promise<{ ed25519: string | null; x25519: string | null }> {
  const rows = await db.query<{ kind: "ed25519" | "x25519"; public_key: string }>("select kind, public_key from user_keys where user_id = $1", [userId]);
  return { ed25519: rows.find((r) => r.kind === "ed25519")?.public_key ?? null, x25519: rows.find((r) => r.kind === "x25519")?.public_key ?? null };
}
