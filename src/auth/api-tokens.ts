import type { Queryable } from "../store/store.ts";
import type { Permission } from "./roles.ts";
import { displayPrefix, newSecret, sha256Hex } from "./secrets.ts";

/**
 * Personal API tokens (`tpat_`, A4). The secret is returned once, at creation; only its
 * SHA-256 is stored. Every function takes the tenant and filters on it. Verification is
 * src/auth/credentials.ts; whoever revokes a token must also drop it from the verifier's
 * cache (`forgetCredential`).
 */
export interface ApiTokenRow {
  id: string;
  tenant_id: string;
  user_id: string;
  name: string;
  prefix: string;
  scopes: string[];
  created_at: Date | string;
  expires_at: Date | string;
  last_used_at: Date | string | null;
  revoked_at: Date | string | null;
}

const COLUMNS = "id, tenant_id, user_id, name, prefix, scopes, created_at, expires_at, last_used_at, revoked_at";

const iso = (d: Date | string) => new Date(d).toISOString();

/** What a list shows: metadata, never the hash. */
export function publicToken(t: ApiTokenRow) {
  return {
    id: t.id,
    name: t.name,
    prefix: t.prefix,
    scopes: t.scopes,
    created_at: iso(t.created_at),
    expires_at: iso(t.expires_at),
    last_used_at: t.last_used_at === null ? null : iso(t.last_used_at),
    revoked_at: t.revoked_at === null ? null : iso(t.revoked_at),
  };
}

export async function createApiToken(
  db: Queryable,
  input: { tenantId: string; userId: string; name: string; scopes: readonly Permission[]; expiresAt: Date },
): Promise<{ row: ApiTokenRow; token: string }> {
  const token = newSecret("apiToken");
  const [row] = await db.query<ApiTokenRow>(
    `insert into api_tokens (id, tenant_id, user_id, name, token_hash, prefix, scopes, expires_at)
     values ($1, $2, $3, $4, $5, $6, $7::text[], $8) returning ${COLUMNS}`,
    [crypto.randomUUID(), input.tenantId, input.userId, input.name, sha256Hex(token), displayPrefix(token), [...input.scopes], input.expiresAt.toISOString()]);
  return { row: row!, token };
}

/** A user's tokens, newest first, revoked and expired ones included (they say what happened). */
export async function listApiTokens(db: Queryable, tenantId: string, userId: string): Promise<ApiTokenRow[]> {
  return db.query<ApiTokenRow>(
    `select ${COLUMNS} from api_tokens where tenant_id = $1 and user_id = $2 order by created_at desc, id`,
    [tenantId, userId]);
}

/**
 * Revokes one of a user's tokens. `null`: no such token of that user in that tenant.
 * `revoked: false`: it was already revoked (the first revocation time stands).
 */
export async function revokeApiToken(db: Queryable, tenantId: string, userId: string, tokenId: string): Promise<{ row: ApiTokenRow; revoked: boolean } | null> {
  const [row] = await db.query<ApiTokenRow>(
    `update api_tokens set revoked_at = now()
      where tenant_id = $1 and user_id = $2 and id = $3 and revoked_at is null returning ${COLUMNS}`,
    [tenantId, userId, tokenId]);
  if (row) return { row, revoked: true };
  const [existing] = await db.query<ApiTokenRow>(
    `select ${COLUMNS} from api_tokens where tenant_id = $1 and user_id = $2 and id = $3`, [tenantId, userId, tokenId]);
  return existing ? { row: existing, revoked: false } : null;
}

/** Revokes every live token of a user (one who may no longer hold any); returns how many. */
export async function revokeUserApiTokens(db: Queryable, tenantId: string, userId: string): Promise<number> {
  const rows = await db.query("update api_tokens set revoked_at = now() where tenant_id = $1 and user_id = $2 and revoked_at is null returning id", [tenantId, userId]);
  return rows.length;
}
