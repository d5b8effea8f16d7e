import type { Queryable } from "../store/store.ts";
import type { Role } from "./roles.ts";

/** The tenant's security policy (tenant_settings). */
export interface TenantSettingsRow {
  require_totp_roles: Role[];
  updated_at: Date | string;
}

export function publicSettings(s: TenantSettingsRow) {
  return { require_totp_roles: s.require_totp_roles, updated_at: new Date(s.updated_at).toISOString() };
}

export async function getSettings(db: Queryable, tenantId: string): Promise<TenantSettingsRow> {
  const [row] = await db.query<TenantSettingsRow>("select require_totp_roles, updated_at from tenant_settings where tenant_id = $1", [tenantId]);
  // Every tenant is created with its settings row; a missing one is the default policy.
  return row ?? { require_totp_roles: [], updated_at: new Date(0) };
}

export async function updateSettings(db: Queryable, tenantId: string, patch: { requireTotpRoles?: Role[] }): Promise<TenantSettingsRow> {
  const [row] = await db.query<TenantSettingsRow>(
    `insert into tenant_settings (tenant_id, require_totp_roles, updated_at) values ($1, coalesce($2::text[], '{}'), now())
     on conflict (tenant_id) do update set require_totp_roles = coalesce($2::text[], tenant_settings.require_totp_roles), updated_at = now()
     returning require_totp_roles, updated_at`,
    [tenantId, patch.requireTotpRoles ?? null]);
  return row!;
}

/**
 * Puts the policy into force for sessions already open: the live sessions of users of
 * `roles` who have no confirmed second factor become restricted (enrollment only), as a new
 * login would be. Returns the users affected, so their cached credentials can be dropped.
 */
export async function restrictSessionsLackingTotp(db: Queryable, tenantId: string, roles: readonly Role[]): Promise<string[]> {
  if (roles.length === 0) return [];
  const rows = await db.query<{ user_id: string }>(
    `update auth_sessions s set restricted = true
       from users u
      where u.id = s.user_id and u.tenant_id = $1 and s.tenant_id = $1 and u.role = any($2::text[])
        and u.totp_confirmed_at is null and not s.restricted and s.revoked_at is null and s.expires_at > now()
      returning s.user_id`,
    [tenantId, [...roles]]);
  return [...new Set(rows.map((r) => r.user_id))];
}

/** The same, for one user whose role just changed to one that requires a second factor. */
export async function restrictUserSessionsLackingTotp(db: Queryable, tenantId: string, userId: string): Promise<void> {
  await db.query(
    `update auth_sessions s set restricted = true from users u
      where u.id = s.user_id and u.id = $2 and u.tenant_id = $1 and u.totp_confirmed_at is null and s.revoked_at is null`,
    [tenantId, userId]);
}
