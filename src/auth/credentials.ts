import type { Queryable } from "../store/store.ts";
import type { Principal } from "./principal.ts";
import { ROLE_PERMISSIONS, isPermission, type Permission, type Role } from "./roles.ts";
import { SECRET_PREFIXES, isSecret, sha256Hex } from "./secrets.ts";

/**
 * Verifies login-plane credentials: session tokens (`tss_`, from the cookie or a bearer header)
 * and API tokens (`tpat_`). Anything else, an agent key or an enrollment key included, is not a
 * credential here. Verified credentials are cached for at most a second, and dropped at once
 * when this process revokes them, so a revocation takes effect within a second everywhere.
 */
export type Resolution = { ok: true; principal: Principal } | { ok: false; code: "INVALID_CREDENTIAL" | "WRONG_CREDENTIAL_PLANE" };

interface Cached {
  principal: Principal;
  until: number;
}

const CACHE_MS = 1_000;
const TOUCH_EVERY_MS = 60_000;

export class CredentialVerifier {
  private readonly cache = new Map<string, Cached>();
  private readonly touched = new Map<string, number>();
  /** One lookup per credential at a time: requests arriving meanwhile share it (no stampede). */
  private readonly inflight = new Map<string, { lookup: Promise<Found | null>; startedAt: number }>();
  /** Bumped by every forget: a lookup that started before one is answered but not cached. */
  private generation = 0;

  constructor(
    private readonly db: Queryable,
    private readonly now: () => number = Date.now,
  ) {}

  async resolve(secret: string): Promise<Resolution> {
    if (isSecret("agentKey", secret) || isSecret("enrollmentKey", secret)) return { ok: false, code: "WRONG_CREDENTIAL_PLANE" };
    const isSession = isSecret("session", secret);
    if (!isSession && !isSecret("apiToken", secret)) return { ok: false, code: "INVALID_CREDENTIAL" };
    const hash = sha256Hex(secret);
    const now = this.now();
    const hit = this.cache.get(hash);
    if (hit && hit.until > now) return { ok: true, principal: hit.principal };
    const generation = this.generation;
    let shared = this.inflight.get(hash);
    if (!shared) {
      shared = { lookup: isSession ? this.session(hash) : this.apiToken(hash), startedAt: now };
      this.inflight.set(hash, shared);
      const done = () => void this.inflight.delete(hash);
      shared.lookup.then(done, done);
    }
    const found = await shared.lookup;
    if (!found) {
      this.cache.delete(hash);
      return { ok: false, code: "INVALID_CREDENTIAL" };
    }
    const { principal, expiresAt } = found;
    if (this.cache.size > 50_000) this.cache.clear();
    // Never cached past the credential's own expiry, nor when it may have been revoked meanwhile.
    // Cached for a second from when the database was asked, not from when this request joined.
    if (generation === this.generation) this.cache.set(hash, { principal, until: Math.min(shared.startedAt + CACHE_MS, expiresAt) });
    this.touch(principal, hash);
    return { ok: true, principal };
  }

  /** Drops every cached credential of a user (logout-all, disable, password reset, role change). */
  forgetUser(userId: string): void {
    this.generation++;
    this.inflight.clear();
    for (const [k, v] of this.cache) if (v.principal.userId === userId) this.cache.delete(k);
  }

  /** Drops one cached credential by its id (logout, token revoke). */
  forgetCredential(credentialId: string): void {
    this.generation++;
    this.inflight.clear();
    for (const [k, v] of this.cache) if (v.principal.credentialId === credentialId) this.cache.delete(k);
  }

  private async session(hash: string): Promise<Found | null> {
    const [row] = await this.db.query<Row & { restricted: boolean }>(
      `select s.id as credential_id, s.restricted, s.expires_at, u.id as user_id, u.tenant_id, u.username, u.role
         from auth_sessions s join users u on u.id = s.user_id
        where s.token_hash = $1 and s.revoked_at is null and s.expires_at > now() and u.disabled_at is null`,
      [hash]);
    if (!row) return null;
    return { principal: principal("session", row, ROLE_PERMISSIONS[row.role], row.restricted), expiresAt: new Date(row.expires_at).getTime() };
  }

  private async apiToken(hash: string): Promise<Found | null> {
    // A token of a user whose role the policy requires a second factor for, and who has none,
    // is restricted like that user's sessions: a token minted before the policy (or before the
    // user's role changed) must not carry on around it.
    const [row] = await this.db.query<Row & { scopes: string[]; restricted: boolean }>(
      `select t.id as credential_id, t.scopes, t.expires_at, u.id as user_id, u.tenant_id, u.username, u.role,
              (u.totp_confirmed_at is null and coalesce(u.role = any(s.require_totp_roles), false)) as restricted
         from api_tokens t join users u on u.id = t.user_id
         left join tenant_settings s on s.tenant_id = u.tenant_id
        where t.token_hash = $1 and t.revoked_at is null and t.expires_at > now() and u.disabled_at is null`,
      [hash]);
    if (!row) return null;
    const granted = ROLE_PERMISSIONS[row.role];
    const scoped = new Set<Permission>(row.scopes.filter(isPermission).filter((p) => granted.has(p)));
    return { principal: principal("api_token", row, scoped, row.restricted === true), expiresAt: new Date(row.expires_at).getTime() };
  }

  /** `last_used_at` / `last_seen_at`, written at most once a minute per credential. */
  private touch(p: Principal, hash: string): void {
    const now = this.now();
    if ((this.touched.get(hash) ?? 0) + TOUCH_EVERY_MS > now) return;
    this.touched.set(hash, now);
    if (this.touched.size > 50_000) this.touched.clear();
    const sql = p.kind === "session"
      ? "update auth_sessions set last_seen_at = now() where id = $1 and revoked_at is null"
      : "update api_tokens set last_used_at = now() where id = $1 and revoked_at is null";
    this.db.query(sql, [p.credentialId]).catch(() => {});
  }
}

interface Found {
  principal: Principal;
  expiresAt: number;
}

interface Row {
  credential_id: string;
  expires_at: Date | string;
  user_id: string;
  tenant_id: string;
  username: string;
  role: Role;
}

function principal(kind: Principal["kind"], row: Row, permissions: ReadonlySet<Permission>, restricted: boolean): Principal {
  return { kind, credentialId: row.credential_id, userId: row.user_id, tenantId: row.tenant_id, username: row.username, role: row.role, permissions, restricted };
}

export { SECRET_PREFIXES };
