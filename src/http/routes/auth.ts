import { Elysia } from "elysia";
import { addressKey } from "../../auth/client-ip.ts";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { liftRestriction, login, logout, SESSION_TTL_MS } from "../../auth/login.ts";
import { verifySecret } from "../../auth/passwords.ts";
import { DEFAULT_TENANT_ID } from "../../auth/tenants.ts";
import { beginTotp, confirmTotp, disableTotp } from "../../auth/totp.ts";
import { getUser, publicUser, revokeSessions, setPassword } from "../../auth/users.ts";
import { LoginRequest, LoginResponse, Password, TotpConfirmRequest, TotpConfirmResponse, TotpDisableRequest, TotpEnrollResponse, User } from "../../protocol/accounts.ts";
import { actorOf, authorize, requestContext, SESSION_COOKIE } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import type { Principal } from "../../auth/principal.ts";

const tags = ["auth"];

/**
 * Checks the caller's own password (a self-service change) under the per-user limit: a stolen
 * session must not be able to brute-force it. A failure counts, a success resets the streak; the
 * failure that locks the user out is audited, and while locked out the answer is 429.
 */
async function checkOwnPassword(deps: AppDeps, ctx: { ip: string; correlationId: string }, me: Principal, password: string, hash: string | undefined, message: string): Promise<void> {
  const limiter = deps.limiters.passwordCheck;
  const v = limiter.check(me.userId);
  if (!v.ok) throw new HttpError(429, "RATE_LIMITED", "too many password attempts; try again later", { "retry-after": String(v.retryAfterSec) });
  if (hash !== undefined && (await verifySecret(password, hash))) {
    limiter.success(me.userId);
    return;
  }
  if (limiter.failure(me.userId)) {
    await audit(deps.store, {
      tenantId: me.tenantId, type: "auth.lockout", outcome: "failure", actor: actorOf(me), target: { type: "user", id: me.userId },
      ip: ctx.ip, correlationId: ctx.correlationId, details: { by: "password_check" },
    });
  }
  throw new HttpError(403, "PASSWORD_INCORRECT", message);
}

/**
 * Whether the session cookie gets Secure: the request reached this server over HTTPS, or a
 * trusted proxy (TETHER_TRUSTED_PROXIES) says it reached the proxy so (X-Forwarded-Proto).
 */
function reachedOverHttps(deps: AppDeps, request: Request, peer: string | undefined): boolean {
  if (new URL(request.url).protocol === "https:") return true;
  return deps.ips.forwardedHttps(peer, request.headers.get("x-forwarded-proto"));
}

/** Login, logout, the caller, and the caller's own second factor and password (A2, A3). */
export const authRoutes = (deps: AppDeps) =>
  new Elysia({ name: "auth-routes" })
    .use(requestContext(deps))
    .post("/api/auth/login", async (ctx) => {
      const { body, request, set, ip, correlationId, server } = ctx;
      const userKey = body.username.trim().toLowerCase();
      const ipKey = addressKey(ip);
      for (const [limiter, key] of [[deps.limiters.loginByIp, ipKey], [deps.limiters.loginByUser, userKey]] as const) {
        const v = limiter.check(key);
        if (!v.ok) {
          await audit(deps.store, { tenantId: DEFAULT_TENANT_ID, type: "auth.login", outcome: "failure", actor: { type: "anonymous", name: body.username.slice(0, 64) }, ip, correlationId, details: { reason: v.reason } });
          throw new HttpError(429, "RATE_LIMITED", "too many login attempts; try again later", { "retry-after": String(v.retryAfterSec) });
        }
      }
      const result = await login(deps.store, { username: body.username, password: body.password, totpCode: body.totp_code, recoveryCode: body.recovery_code, ip, userAgent: request.headers.get("user-agent") });
      if (!result.ok) {
        const lockedIp = deps.limiters.loginByIp.failure(ipKey);
        const lockedUser = deps.limiters.loginByUser.failure(userKey);
        const tenantId = result.tenantId ?? DEFAULT_TENANT_ID;
        await audit(deps.store, {
          tenantId, type: "auth.login", outcome: "failure", actor: { type: "anonymous", id: result.userId ?? null, name: body.username.slice(0, 64) },
          target: result.userId ? { type: "user", id: result.userId } : null, ip, correlationId, details: { reason: result.reason },
        });
        if (lockedIp || lockedUser) {
          await audit(deps.store, {
            tenantId, type: "auth.lockout", outcome: "failure", actor: { type: "anonymous", name: body.username.slice(0, 64) },
            target: result.userId ? { type: "user", id: result.userId } : null, ip, correlationId, details: { by: lockedIp ? "ip" : "username" },
          });
        }
        if (result.reason === "totp_required") throw new HttpError(401, "TOTP_REQUIRED", "enter the code from your authenticator app (or a recovery code)");
        if (result.reason === "totp_invalid") throw new HttpError(401, "TOTP_INVALID", "that code is not valid");
        throw new HttpError(401, "LOGIN_FAILED", "wrong username or password");
      }
      deps.limiters.loginByIp.success(ipKey);
      deps.limiters.loginByUser.success(userKey);
      await audit(deps.store, {
        tenantId: result.tenantId, type: "auth.login", actor: { type: "user", id: result.userId, name: result.username }, target: { type: "user", id: result.userId },
        ip, correlationId, details: { session_id: result.sessionId, second_factor: body.totp_code ? "totp" : body.recovery_code ? "recovery_code" : "none", restricted: result.restricted },
      });
      const secure = reachedOverHttps(deps, request, server?.requestIP(request)?.address) ? "; Secure" : "";
      set.headers["set-cookie"] = `${SESSION_COOKIE}=${result.token}; HttpOnly; SameSite=Lax; Path=/; Max-Age=${SESSION_TTL_MS / 1000}${secure}`;
      const user = (await getUser(deps.store, result.tenantId, result.userId))!;
      return { token: result.token, expires_at: result.expiresAt.toISOString(), restricted: result.restricted, user: publicUser(user) };
    }, { body: LoginRequest, response: { 200: LoginResponse }, detail: { tags, summary: "Sign in", security: [] } })

    .post("/api/auth/logout", async (ctx) => {
      const me = await authorize(ctx, undefined, { allowRestricted: true, sessionOnly: true });
      await logout(deps.store, me.credentialId);
      deps.verifier.forgetCredential(me.credentialId);
      deps.rooms.hub.closeCredential(me.credentialId);
      const { ip, correlationId } = ctx;
      await audit(deps.store, { tenantId: me.tenantId, type: "auth.logout", actor: actorOf(me), target: { type: "user", id: me.userId }, ip, correlationId, details: { session_id: me.credentialId } });
      ctx.set.headers["set-cookie"] = `${SESSION_COOKIE}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0`;
      ctx.set.status = 204;
    }, { detail: { tags, summary: "Sign out (revokes this session at once)" } })

    .get("/api/me", async (ctx) => {
      const me = await authorize(ctx, undefined, { allowRestricted: true });
      const user = await getUser(deps.store, me.tenantId, me.userId);
      if (!user) throw new HttpError(401, "INVALID_CREDENTIAL", "the credential is invalid, expired or revoked");
      return { ...publicUser(user), permissions: [...me.permissions].sort(), credential: me.kind, restricted: me.restricted };
    }, { response: { 200: User.extend({ permissions: z.array(z.string()), credential: z.enum(["session", "api_token"]), restricted: z.boolean() }) }, detail: { tags, summary: "The caller" } })

    .post("/api/me/totp", async (ctx) => {
      const me = await authorize(ctx, undefined, { allowRestricted: true, sessionOnly: true });
      const user = await getUser(deps.store, me.tenantId, me.userId);
      if (user?.totp_confirmed_at) throw new HttpError(409, "TOTP_ALREADY_ENABLED", "a second factor is already enabled; disable it first");
      return beginTotp(deps.store, me.userId, me.username);
    }, { response: { 200: TotpEnrollResponse }, detail: { tags, summary: "Start TOTP enrollment: a secret and an otpauth:// URI" } })

    .post("/api/me/totp/confirm", async (ctx) => {
      const me = await authorize(ctx, undefined, { allowRestricted: true, sessionOnly: true });
      const codes = await confirmTotp(deps.store, me.tenantId, me.userId, me.username, ctx.body.code);
      if (!codes) throw new HttpError(400, "TOTP_INVALID", "that code is not valid for the pending secret");
      // Only this session presented the factor: the user's other restricted sessions (one may be an
      // intruder's, opened with the password alone) end rather than lift.
      await liftRestriction(deps.store, me.userId, me.credentialId);
      deps.verifier.forgetUser(me.userId);
      const { ip, correlationId } = ctx;
      await audit(deps.store, { tenantId: me.tenantId, type: "user.totp_enabled", actor: actorOf(me), target: { type: "user", id: me.userId }, ip, correlationId });
      return { recovery_codes: codes };
    }, { body: TotpConfirmRequest, response: { 200: TotpConfirmResponse }, detail: { tags, summary: "Confirm TOTP with a first code; returns one-time recovery codes" } })

    .delete("/api/me/totp", async (ctx) => {
      const me = await authorize(ctx, undefined, { sessionOnly: true });
      const [row] = await deps.store.query<{ password_hash: string; require_totp_roles: string[] }>(
        "select u.password_hash, s.require_totp_roles from users u join tenant_settings s on s.tenant_id = u.tenant_id where u.id = $1", [me.userId]);
      await checkOwnPassword(deps, ctx, me, ctx.body.password, row?.password_hash, "the password is not correct");
      if (row!.require_totp_roles.includes(me.role)) throw new HttpError(409, "TOTP_REQUIRED_BY_POLICY", `policy requires a second factor for the ${me.role} role`);
      await disableTotp(deps.store, me.userId);
      const { ip, correlationId } = ctx;
      await audit(deps.store, { tenantId: me.tenantId, type: "user.totp_disabled", actor: actorOf(me), target: { type: "user", id: me.userId }, ip, correlationId });
      ctx.set.status = 204;
    }, { body: TotpDisableRequest, detail: { tags, summary: "Disable your second factor (needs your password)" } })

    .post("/api/me/password", async (ctx) => {
      const me = await authorize(ctx, undefined, { sessionOnly: true });
      const [row] = await deps.store.query<{ password_hash: string }>("select password_hash from users where id = $1", [me.userId]);
      await checkOwnPassword(deps, ctx, me, ctx.body.current_password, row?.password_hash, "the current password is not correct");
      await setPassword(deps.store, me.tenantId, me.userId, ctx.body.new_password);
      await revokeSessions(deps.store, me.userId, me.credentialId);
      deps.verifier.forgetUser(me.userId);
      deps.rooms.hub.closeUser(me.userId, { kind: "session", except: me.credentialId });
      const { ip, correlationId } = ctx;
      await audit(deps.store, { tenantId: me.tenantId, type: "user.password_changed", actor: actorOf(me), target: { type: "user", id: me.userId }, ip, correlationId });
      ctx.set.status = 204;
    }, { body: z.object({ current_password: z.string().min(1).max(256), new_password: Password }), detail: { tags, summary: "Change your password (ends your other sessions)" } });

