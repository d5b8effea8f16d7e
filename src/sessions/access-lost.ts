import type { ActorSystem } from "../actors/system.ts";
import type { Serial } from "../actors/serial.ts";
import type { Logger } from "../log.ts";
import type { Rooms } from "../rooms/service.ts";
import type { Queryable } from "../store/store.ts";

/**
 * What losing access ends: every live session on a removed machine; and the end_user sessions
 * an end user opened on a machine they may no longer reach (a grant taken back, the user
 * disabled or given another role). A viewer token is checked only when minted and when its
 * socket connects, so without this such a session would go on, and keep its viewers, until
 * someone ended it.
 */
export type LostAccess = { machineIds: readonly string[] } | { endUser: string; machineId?: string };

export interface AccessLostDeps {
  store: Queryable;
  system: ActorSystem;
  sessionWrites: Serial;
  log: Logger;
}

/** Ends those sessions with the reason `removal` (their viewers are disconnected); resolves with how many. */
export async function endSessionsOnLostAccess(deps: AccessLostDeps, tenantId: string, lost: LostAccess): Promise<number> {
  const rows = "machineIds" in lost
    ? await deps.store.query<{ id: string }>(
      "select id from sessions where tenant_id = $1 and ended_at is null and machine_id = any($2::uuid[])", [tenantId, [...lost.machineIds]])
    : await deps.store.query<{ id: string }>(
      `select id from sessions where tenant_id = $1 and ended_at is null and kind = 'end_user' and created_by = $2
          and ($3::uuid is null or machine_id = $3::uuid)`, [tenantId, lost.endUser, lost.machineId ?? null]);
  await Promise.all(rows.map(async ({ id }) => {
    try {
      await deps.system.ask(`session/${id}`, { type: "session.end", by: "removal" });
      await deps.sessionWrites.settled(id);
    } catch (err) {
      // The access is gone either way (the grant, the machine); the session ends at its next timeout.
      deps.log.warn({ session: id, err: (err as Error).message }, "could not end a session that lost its access");
    }
  }));
  return rows.length;
}

/**
 * An end user who loses a machine (its grant taken back) also leaves the rooms of that machine's
 * sessions: they are removed as any member is (`member.remove`, by the system), so their streams
 * end with `not_a_member`, an encrypted room moves to a new key epoch, and reads answer 403
 * from then on. Without this they would keep reading the chat of sessions they may no longer
 * join. Resolves with how many rooms they left.
 */
export async function leaveSessionRoomsOnLostGrant(deps: { store: Queryable; rooms: Rooms; log: Logger }, tenantId: string, endUser: string, machineId: string): Promise<number> {
  const rows = await deps.store.query<{ id: string }>(
    `select s.id from sessions s join room_members m on m.room_id = s.id and m.member = $3
      where s.tenant_id = $1 and s.machine_id = $2::uuid`, [tenantId, machineId, endUser]);
  let left = 0;
  for (const { id } of rows) {
    try {
      const reply = await deps.rooms.ask(id, { type: "member.remove", member: endUser, by: null });
      if (reply.ok) left++;
    } catch (err) {
      deps.log.warn({ room_id: id, err: (err as Error).message }, "could not remove an end user who lost a machine from its session room");
    }
  }
  return left;
}
