import type { Queryable } from "../store/store.ts";
import { hashSecret } from "./passwords.ts";
import type { Role } from "./roles.ts";

/** Users of a tenant. Every function takes the tenant and filters on it. */
export interface UserRow {
  id: string;
  tenant_id: string;
  username: string;
  display_name: string;
  role: Role;
  disabled_at: Date | string | null;
  totp_confirmed_at: Date | string | null;
  created_at: Date | string;
}

const COLUMNS = "id, tenant_id, username, display_name, role, disabled_at, totp_confirmed_at, created_at";

export function publicUser(u: UserRow) {
  return {
    id: u.id,
    username: u.username,
    display_name: u.display_name,
    role: u.role,
    disabled: u.disabled_at !== null,
    totp_enabled: u.totp_confirmed_at !== null,
    created_at: new Date(u.created_at).toISOString(),
  };
}

export class UsernameTakenError extends Error {}

export async function createUser(db: Queryable, tenantId: string, input: { username: string; displayName?: string; role: Role; password: string }): Promise<UserRow> {
  const hash = await hashSecret(input.password);
  const rows = await db.query<UserRow>(
    `insert into users (id, tenant_id, username, display_name, role, password_hash)
     values ($1, $2, $3, $4, $5, $6) on conflict (lower(username)) do nothing returning ${COLUMNS}`,
    [crypto.randomUUID(), tenantId, input.username, input.displayName ?? input.username, input.role, hash]);
  if (!rows[0]) throw new UsernameTakenError(input.username);
  return rows[0];
}

export async function listUsers(db: Queryable, tenantId: string, role?: Role): Promise<UserRow[]> {
  return role
    ? db.query<UserRow>(`select ${COLUMNS} from users where tenant_id = $1 and role = $2 order by lower(username)`, [tenantId, role])
    : db.query<UserRow>(`select ${COLUMNS} from users where tenant_id = $1 order by lower(username)`, [tenantId]);
}

export async function getUser(db: Queryable, tenantId: string, id: string): Promise<UserRow | null> {
  const [row] = await db.query<UserRow>(`select ${COLUMNS} from users where tenant_id = $1 and id = $2`, [tenantId, id]);
  return row ?? null;
}

export async function updateUser(db: Queryable, tenantId: string, id: string, patch: { displayName?: string; role?: Role; disabled?: boolean }): Promise<UserRow | null> {
  const [row] = await db.query<UserRow>(
    `update users set
        display_name = coalesce($3, display_name),
        role = coalesce($4, role),
        disabled_at = case when $5::boolean is null then disabled_at when $5 then coalesce(disabled_at, now()) else null end,
        updated_at = now()
      where tenant_id = $1 and id = $2 returning ${COLUMNS}`,
    [tenantId, id, patch.displayName ?? null, patch.role ?? null, patch.disabled ?? null]);
  return row ?? null;
}

export async function setPassword(db: Queryable, tenantId: string, id: string, password: string): Promise<boolean> {
  const hash = await hashSecret(password);
  const rows = await db.query("update users set password_hash = $3, updated_at = now() where tenant_id = $1 and id = $2 returning id", [tenantId, id, hash]);
  return rows.length === 1;
}

/** Ends every live login session of a user. API tokens are revoked separately, or by disabling. */
export async function revokeSessions(db: Queryable, userId: string, except?: string): Promise<number> {
  const rows = await db.query(
    "update auth_sessions set revoked_at = now() where user_id = $1 and revoked_at is null and ($2::uuid is null or id <> $2) returning id",
    [userId, except ?? null]);
  return rows.length;
}

export async function countAdmins(db: Queryable, tenantId: string): Promise<number> {
  const [row] = await db.query<{ n: number }>("select count(*)::int as n from users where tenant_id = $1 and role = 'admin' and disabled_at is null", [tenantId]);
  return Number(row?.n ?? 0);
}
