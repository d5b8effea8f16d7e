import { errors, jwtVerify, SignJWT } from "jose";
import type { Access } from "../protocol/relay.ts";
import type { Queryable } from "../store/store.ts";

/**
 * Viewer tokens (S3): a JWT (HS256, via jose) valid 5 minutes, bound to one session and one
 * access level, minted after the API's authorization check and accepted only by
 * `/ws/viewer`. The signing key is generated once per deployment and kept in the database,
 * so a standby verifies what the primary signed. A token can be revoked before it expires
 * (its jti is recorded); ending the session makes every token of it useless anyway.
 */
export const VIEWER_TOKEN_TTL_S = 300;
const PURPOSE = "viewer";
const ISSUER = "tether";

export interface ViewerClaims {
  jti: string;
  session: string;
  access: Access;
  userId: string;
  name: string;
  tenantId: string;
  /** Minted for an end user (their own session), not staff: what they do is theirs, not a technician's. */
  endUser?: boolean;
  expiresAt: number;
}

/** Why a presented token is refused: 401 for all but `wrong_session` (403). */
export type TokenRefusal = "malformed" | "bad_signature" | "expired" | "wrong_purpose" | "revoked" | "wrong_session";

export class ViewerTokens {
  private constructor(private readonly key: Uint8Array) {}

  /** Loads the deployment's signing key, creating it on first use (race-safe across processes). */
  static async load(db: Queryable): Promise<ViewerTokens> {
    const fresh = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64");
    await db.query("insert into server_secrets (name, value) values ('viewer_token_key', $1) on conflict (name) do nothing", [fresh]);
    const [row] = await db.query<{ value: string }>("select value from server_secrets where name = 'viewer_token_key'");
    return new ViewerTokens(new Uint8Array(Buffer.from(row!.value, "base64")));
  }

  async mint(c: Omit<ViewerClaims, "jti" | "expiresAt">, now = Date.now()): Promise<{ token: string; claims: ViewerClaims }> {
    const jti = crypto.randomUUID();
    const iat = Math.floor(now / 1000);
    const token = await new SignJWT({ purpose: PURPOSE, sid: c.session, acc: c.access, name: c.name, tid: c.tenantId, ...(c.endUser ? { eu: true } : {}) })
      .setProtectedHeader({ alg: "HS256", typ: "JWT" })
      .setIssuer(ISSUER).setSubject(c.userId).setJti(jti).setIssuedAt(iat).setExpirationTime(iat + VIEWER_TOKEN_TTL_S)
      .sign(this.key);
    return { token, claims: { ...c, jti, expiresAt: (iat + VIEWER_TOKEN_TTL_S) * 1000 } };
  }

  /**
   * The checks of S3, in order: signature, expiry, purpose, revocation, session binding. A
   * login session token or API token is not a JWT of ours and fails the first.
   */
  async verify(db: Queryable, token: string, sessionId: string): Promise<{ ok: true; claims: ViewerClaims } | { ok: false; why: TokenRefusal }> {
    if (token.length > 4096 || token.split(".").length !== 3) return { ok: false, why: "malformed" };
    let payload;
    try {
      ({ payload } = await jwtVerify(token, this.key, { algorithms: ["HS256"], issuer: ISSUER }));
    } catch (e) {
      if (e instanceof errors.JWTExpired) return { ok: false, why: "expired" };
      return { ok: false, why: "bad_signature" };
    }
    const p = payload as Record<string, unknown>;
    if (p.purpose !== PURPOSE || typeof p.sid !== "string" || (p.acc !== "control" && p.acc !== "view") || typeof p.jti !== "string" || typeof p.sub !== "string") {
      return { ok: false, why: "wrong_purpose" };
    }
    // Revoked for its own session only: a revocation is recorded under the session it was asked for.
    const [revoked] = await db.query("select 1 from viewer_token_revocations where jti = $1 and session_id = $2", [p.jti, p.sid]);
    if (revoked) return { ok: false, why: "revoked" };
    if (p.sid !== sessionId) return { ok: false, why: "wrong_session" };
    return {
      ok: true,
      claims: { jti: p.jti, session: p.sid, access: p.acc, userId: p.sub, name: String(p.name ?? ""), tenantId: String(p.tid ?? ""), ...(p.eu === true ? { endUser: true } : {}), expiresAt: Number(p.exp) * 1000 },
    };
  }

  static async revoke(db: Queryable, jti: string, sessionId: string, expiresAt: number): Promise<void> {
    await db.query("insert into viewer_token_revocations (jti, session_id, expires_at) values ($1, $2, $3) on conflict do nothing", [jti, sessionId, new Date(expiresAt)]);
  }
}
