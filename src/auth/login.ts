import type { Queryable } from "../store/store.ts";
import { verifyNothing, verifySecret } from "./passwords.ts";
import type { Role } from "./roles.ts";
import { newSecret, sha256Hex } from "./secrets.ts";
import { checkTotp, useRecoveryCode } from "./totp.ts";

export const SESSION_TTL_MS = 12 * 60 * 60 * 1000;

export type LoginOutcome =
  | { ok: true; token: string; sessionId: string; expiresAt: Date; restricted: boolean; userId: string; tenantId: string; username: string }
  | { ok: false; reason: "bad_credentials"; userId?: string; tenantId?: string }
  | { ok: false; reason: "totp_required" | "totp_invalid"; userId: string; tenantId: string };

interface LoginRow {
  id: string;
  tenant_id: string;
  username: string;
  role: Role;
  password_hash: string;
  disabled_at: unknown;
  totp_secret: string | null;
  totp_confirmed_at: unknown;
  totp_last_step: number | null;
  require_totp_roles: string[];
}

/**
 * Password, then second factor, then a session. An unknown user, a disabled one and a wrong
 * password all pay one Argon2id verification and give the same answer. Only after the right
 * password does the caller learn that a second factor is needed.
 */
export async function login(db: Queryable, input: { username: string; password: string; totpCode?: string; recoveryCode?: string; ip: string; userAgent: string | null }): Promise<LoginOutcome> {
  const [u] = await db.query<LoginRow>(
    `select u.id, u.tenant_id, u.username, u.role, u.password_hash, u.disabled_at, u.totp_secret, u.totp_confirmed_at, u.totp_last_step, s.require_totp_roles
       from users u join tenant_settings s on s.tenant_id = u.tenant_id
      where lower(u.username) = lower($1)`,
    [input.username]);
  if (!u) return (await verifyNothing(input.password), { ok: false, reason: "bad_credentials" });
  const passwordOk = await verifySecret(input.password, u.password_hash);
  if (!passwordOk || u.disabled_at) return { ok: false, reason: "bad_credentials", userId: u.id, tenantId: u.tenant_id };

  const hasTotp = u.totp_confirmed_at !== null && u.totp_secret !== null;
  if (hasTotp) {
    if (!input.totpCode && !input.recoveryCode) return { ok: false, reason: "totp_required", userId: u.id, tenantId: u.tenant_id };
    const ok = input.totpCode
      ? await checkTotp(db, u.id, u.username, u.totp_secret!, input.totpCode, u.totp_last_step)
      : await useRecoveryCode(db, u.id, input.recoveryCode!);
    if (!ok) return { ok: false, reason: "totp_invalid", userId: u.id, tenantId: u.tenant_id };
  }
  const restricted = !hasTotp && u.require_totp_roles.includes(u.role);
  const token = newSecret("session");
  const sessionId = crypto.randomUUID();
  const expiresAt = new Date(Date.now() + SESSION_TTL_MS);
  await db.query(
    `insert into auth_sessions (id, tenant_id, user_id, token_hash, restricted, ip, user_agent, expires_at)
     values ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [sessionId, u.tenant_id, u.id, sha256Hex(token), restricted, input.ip, input.userAgent?.slice(0, 256) ?? null, expiresAt.toISOString()]);
  return { ok: true, token, sessionId, expiresAt, restricted, userId: u.id, tenantId: u.tenant_id, username: u.username };
}

export async function logout(db: Queryable, sessionId: string): Promise<void> {
  await db.query("update auth_sessions set revoked_at = now() where id = $1 and revoked_at is null", [sessionId]);
}

/**
 * Once a restricted session's user has a second factor, the session that confirmed it is
 * lifted. The user's other restricted sessions never presented the factor (one may be an
 * intruder's, opened with the password alone): they end, and their user signs in again.
 */
export async function liftRestriction(db: Queryable, userId: string, sessionId: string): Promise<void> {
  await db.query("update auth_sessions set restricted = false where user_id = $1 and id = $2 and restricted and revoked_at is null", [userId, sessionId]);
  await db.query("update auth_sessions set revoked_at = now() where user_id = $1 and id <> $2 and restricted and revoked_at is null", [userId, sessionId]);
}
