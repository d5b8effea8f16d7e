import type { Principal } from "../auth/principal.ts";
import type { Queryable } from "../store/store.ts";
import { iso } from "./rows.ts";

/**
 * End users' machines (A9). An end_user reaches a machine only through a grant, and a grant
 * counts only while the user is still an enabled end_user of the machine's tenant and the
 * machine is not removed: checked when granted and again at every use. No grants: no machines.
 * Removing a machine takes its grants back: one that enrolls again is granted anew or not at all.
 */

/**
 * SQL: true when user `$userParam` may reach the machine `machineAlias` (same tenant, still an
 * end user, a grant). The one predicate the listing and `endUserMayReach` share.
 */
export const granted = (userParam: string, machineAlias: string) => `exists (
  select 1 from user_machine_grants g join users u on u.id = g.user_id
   where g.user_id = ${userParam} and g.machine_id = ${machineAlias}.id
     and g.tenant_id = ${machineAlias}.tenant_id and u.tenant_id = ${machineAlias}.tenant_id
     and u.role = 'end_user' and u.disabled_at is null)`;

/** Whether `user` may reach `machineId` now. For the session and connect paths. */
export async function endUserMayReach(db: Queryable, user: Pick<Principal, "userId" | "tenantId">, machineId: string): Promise<boolean> {
  const rows = await db.query(
    `select 1 from machines m where m.id = $2 and m.tenant_id = $3 and m.deleted_at is null and ${granted("$1", "m")}`,
    [user.userId, machineId, user.tenantId]);
  return rows.length === 1;
}

export interface GrantRow {
  user_id: string;
  machine_id: string;
  hostname: string;
  site_code: string | null;
  created_at: Date | string;
}

export function publicGrant(g: GrantRow) {
  return { user_id: g.user_id, machine_id: g.machine_id, hostname: g.hostname, site_code: g.site_code, created_at: iso(g.created_at) };
}

export type GrantResult = { ok: true; grant: GrantRow; created: boolean } | { ok: false; reason: "user_not_found" | "not_end_user" | "machine_not_found" };

/** Grants `machineId` to end user `userId`, both of `tenantId`. Idempotent. */
export async function grantMachine(db: Queryable, tenantId: string, userId: string, machineId: string, by: string): Promise<GrantResult> {
  const [user] = await db.query<{ role: string }>("select role from users where tenant_id = $1 and id = $2", [tenantId, userId]);
  if (!user) return { ok: false, reason: "user_not_found" };
  if (user.role !== "end_user") return { ok: false, reason: "not_end_user" };
  // The insert re-checks both sides itself, so a change between the reads above and it cannot
  // slip through. FOR SHARE: a removal under way (which takes the machine's grants back) is
  // waited for and its deleted_at seen, or the grant would land after the removal's sweep.
  const inserted = await db.query(
    `insert into user_machine_grants (tenant_id, user_id, machine_id, created_by)
     select $1, u.id, m.id, $4 from users u, machines m
      where u.id = $2 and u.tenant_id = $1 and u.role = 'end_user' and m.id = $3 and m.tenant_id = $1 and m.deleted_at is null
      for share of m
     on conflict (user_id, machine_id) do nothing returning machine_id`,
    [tenantId, userId, machineId, by]);
  const grant = await getGrant(db, tenantId, userId, machineId);
  if (!grant) return { ok: false, reason: "machine_not_found" };
  return { ok: true, grant, created: inserted.length === 1 };
}

/**
 * Takes back every grant to `machineIds` (at their removal, and at a revival in case one slipped
 * in): answers who lost which machine, for the audit log and the rooms they leave.
 */
export async function dropMachineGrants(db: Queryable, tenantId: string, machineIds: readonly string[]): Promise<Array<{ user_id: string; machine_id: string }>> {
  if (machineIds.length === 0) return [];
  return db.query(
    `delete from user_machine_grants where tenant_id = $1 and machine_id in (select jsonb_array_elements_text($2::text::jsonb)::uuid)
      returning user_id, machine_id`,
    [tenantId, JSON.stringify(machineIds)]);
}

export async function revokeGrant(db: Queryable, tenantId: string, userId: string, machineId: string): Promise<boolean> {
  const rows = await db.query("delete from user_machine_grants where tenant_id = $1 and user_id = $2 and machine_id = $3 returning machine_id", [tenantId, userId, machineId]);
  return rows.length === 1;
}

const GRANT_SELECT = `select g.user_id, g.machine_id, m.hostname, s.site_code, g.created_at
  from user_machine_grants g join machines m on m.id = g.machine_id and m.tenant_id = g.tenant_id left join sites s on s.id = m.site_id
 where g.tenant_id = $1 and g.user_id = $2 and m.deleted_at is null`;

/** The machines granted to a user (removed machines left out). */
export async function listGrants(db: Queryable, tenantId: string, userId: string): Promise<GrantRow[]> {
  return db.query<GrantRow>(`${GRANT_SELECT} order by lower(m.hostname), m.id`, [tenantId, userId]);
}

async function getGrant(db: Queryable, tenantId: string, userId: string, machineId: string): Promise<GrantRow | null> {
  const [row] = await db.query<GrantRow>(`${GRANT_SELECT} and g.machine_id = $3`, [tenantId, userId, machineId]);
  return row ?? null;
}
