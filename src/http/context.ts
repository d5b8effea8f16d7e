import { Elysia } from "elysia";
import type { AuditActor } from "../audit/audit.ts";
import { audit } from "../audit/audit.ts";
import type { Principal } from "../auth/principal.ts";
import { ROLE_PERMISSIONS, type Permission } from "../auth/roles.ts";
import { DEFAULT_TENANT_ID } from "../auth/tenants.ts";
import { CORRELATION_HEADER } from "../protocol/errors.ts";
import type { AppDeps } from "./deps.ts";
import { HttpError } from "./errors.ts";

export const SESSION_COOKIE = "tether_session";
const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

/** Per request: the client IP, the correlation id, and the presented login credential (unverified). */
export type RequestContext = {
  ip: string;
  correlationId: string;
  credential: { secret: string; via: "bearer" | "cookie" } | null;
  deps: AppDeps;
};

export const requestContext = (deps: AppDeps) =>
  new Elysia({ name: "request-context" }).derive({ as: "global" }, ({ request, server, set }): RequestContext => {
    const ip = deps.ips.resolve(server?.requestIP(request)?.address, request.headers.get("x-forwarded-for"));
    const correlationId = String(set.headers[CORRELATION_HEADER] ?? "");
    const header = request.headers.get("authorization");
    let credential: RequestContext["credential"] = null;
    if (header) credential = { secret: header.replace(/^Bearer\s+/i, "").trim(), via: "bearer" };
    else {
      const cookie = readCookie(request.headers.get("cookie"), SESSION_COOKIE);
      if (cookie) credential = { secret: cookie, via: "cookie" };
    }
    return { ip, correlationId, credential, deps };
  });

export interface AuthorizeOptions {
  /** Allowed for a session restricted to second-factor enrollment. */
  allowRestricted?: boolean;
  /** Only a login session, not an API token (e.g. minting tokens). */
  sessionOnly?: boolean;
}

/**
 * The caller, verified, holding `permission` (if given); else a 401/403 in the envelope.
 * Login-plane credentials only: an agent or enrollment key here is refused and audited.
 */
export async function authorize(ctx: RequestContext & { request: Request }, permission?: Permission, opts: AuthorizeOptions = {}): Promise<Principal> {
  const { credential, deps } = ctx;
  if (!credential || !credential.secret) throw new HttpError(401, "UNAUTHENTICATED", "sign in, or send a bearer token");
  const result = await deps.verifier.resolve(credential.secret);
  if (!result.ok) {
    if (result.code === "WRONG_CREDENTIAL_PLANE") {
      await audit(deps.store, {
        tenantId: DEFAULT_TENANT_ID, type: "auth.plane_violation", outcome: "failure", actor: { type: "anonymous" },
        ip: ctx.ip, correlationId: ctx.correlationId, details: { presented: credential.secret.slice(0, 4), route: new URL(ctx.request.url).pathname },
      }).catch(() => {});
      throw new HttpError(401, "WRONG_CREDENTIAL_PLANE", "that credential is not valid here: this API takes a login session or an API token");
    }
    throw new HttpError(401, "INVALID_CREDENTIAL", "the credential is invalid, expired or revoked");
  }
  const p = result.principal;
  if (credential.via === "cookie" && UNSAFE.has(ctx.request.method)) checkSameOrigin(ctx.request);
  if (p.restricted && !opts.allowRestricted) throw new HttpError(403, "TOTP_ENROLLMENT_REQUIRED", "your role requires a second factor: enroll one at /api/me/totp first");
  if (opts.sessionOnly && p.kind !== "session") throw new HttpError(403, "SESSION_REQUIRED", "this needs a login session, not an API token");
  if (permission && !p.permissions.has(permission)) {
    const roleHasIt = ROLE_PERMISSIONS[p.role].has(permission);
    throw new HttpError(403, "FORBIDDEN", p.kind === "api_token" && roleHasIt ? `the token lacks the ${permission} scope` : `your role may not do this (${permission})`);
  }
  return p;
}

/** Cookie-authenticated writes must come from our own origin (CSRF), on top of SameSite=Lax. */
function checkSameOrigin(request: Request): void {
  const origin = request.headers.get("origin");
  if (!origin) return; // not a browser, or a same-origin request from an old one
  const host = request.headers.get("host");
  let originHost: string;
  try {
    originHost = new URL(origin).host;
  } catch {
    throw new HttpError(403, "CSRF_REJECTED", "cross-site request refused");
  }
  if (originHost !== host) throw new HttpError(403, "CSRF_REJECTED", "cross-site request refused");
}

/** The audit actor for a verified caller. */
export function actorOf(p: Principal): AuditActor {
  return p.kind === "session" ? { type: "user", id: p.userId, name: p.username } : { type: "api_token", id: p.credentialId, name: p.username };
}

function readCookie(header: string | null, name: string): string | null {
  if (!header) return null;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return decodeCookieValue(part.slice(eq + 1).trim());
  }
  return null;
}

/** A value with a broken %-escape is taken as it is (no token has one: it is then refused as invalid). */
function decodeCookieValue(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}
