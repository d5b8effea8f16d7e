import { Elysia } from "elysia";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { createApiToken, listApiTokens, publicToken, revokeApiToken } from "../../auth/api-tokens.ts";
import type { Principal } from "../../auth/principal.ts";
import { ROLE_PERMISSIONS, type Permission } from "../../auth/roles.ts";
import { getUser } from "../../auth/users.ts";
import { Uuid } from "../../protocol/accounts.ts";
import { CreatedToken, CreateTokenRequest, TokenList } from "../../protocol/tokens.ts";
import { actorOf, authorize, requestContext, type RequestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";

const tags = ["tokens"];

/**
 * Personal API tokens (A4). A token is minted from a login session only (a token cannot mint
 * tokens), with scopes the caller's role has; it acts with its user's role narrowed to its
 * scopes, until it expires, is revoked, or its user is disabled. The secret is shown once.
 * Admins (users:write) may list and revoke any token of their tenant.
 */
export const tokenRoutes = (deps: AppDeps) => {
  /** Revokes, drops the verifier's cached copy (so the next request is refused), audits. */
  const revoke = async (ctx: RequestContext, me: Principal, userId: string, tokenId: string, by: "self" | "admin") => {
    const result = await revokeApiToken(deps.store, me.tenantId, userId, tokenId);
    if (!result) throw new HttpError(404, "TOKEN_NOT_FOUND", "no such token");
    deps.verifier.forgetCredential(tokenId);
    deps.rooms.hub.closeCredential(tokenId);
    if (result.revoked) {
      await audit(deps.store, {
        tenantId: me.tenantId, type: "token.revoked", actor: actorOf(me), target: { type: "api_token", id: tokenId }, ip: ctx.ip, correlationId: ctx.correlationId,
        details: { user_id: userId, name: result.row.name, prefix: result.row.prefix, by },
      });
    }
  };

  return new Elysia({ name: "token-routes" })
    .use(requestContext(deps))
    .post("/api/tokens", async (ctx) => {
      const me = await authorize(ctx, undefined, { sessionOnly: true });
      if (me.role === "end_user") throw new HttpError(403, "FORBIDDEN", "end users may not mint API tokens");
      const { body } = ctx;
      const granted = ROLE_PERMISSIONS[me.role];
      const scopes = [...new Set(body.scopes)].sort() as Permission[];
      const missing = scopes.filter((s) => !granted.has(s));
      if (missing.length > 0) throw new HttpError(400, "SCOPE_NOT_ALLOWED", `body.scopes: your role (${me.role}) does not have ${missing.join(", ")}`);
      const { row, token } = await createApiToken(deps.store, { tenantId: me.tenantId, userId: me.userId, name: body.name, scopes, expiresAt: new Date(body.expires_at) });
      const t = publicToken(row);
      await audit(deps.store, {
        tenantId: me.tenantId, type: "token.created", actor: actorOf(me), target: { type: "api_token", id: row.id }, ip: ctx.ip, correlationId: ctx.correlationId,
        details: { user_id: me.userId, name: t.name, prefix: t.prefix, scopes: t.scopes, expires_at: t.expires_at },
      });
      ctx.set.status = 201;
      return { id: t.id, name: t.name, token, prefix: t.prefix, scopes: t.scopes, expires_at: t.expires_at, created_at: t.created_at };
    }, { body: CreateTokenRequest, response: { 201: CreatedToken }, detail: { tags, summary: "Mint a personal API token (login session only); the token is shown once" } })

    .get("/api/tokens", async (ctx) => {
      const me = await authorize(ctx);
      return { tokens: (await listApiTokens(deps.store, me.tenantId, me.userId)).map(publicToken) };
    }, { response: { 200: TokenList }, detail: { tags, summary: "Your API tokens (metadata only)" } })

    .delete("/api/tokens/:id", async (ctx) => {
      const me = await authorize(ctx);
      await revoke(ctx, me, me.userId, ctx.params.id, "self");
      ctx.set.status = 204;
    }, { params: z.object({ id: Uuid }), detail: { tags, summary: "Revoke one of your API tokens (effective at once)" } })

    .get("/api/users/:id/tokens", async (ctx) => {
      const me = await authorize(ctx, "users:write");
      const user = await getUser(deps.store, me.tenantId, ctx.params.id);
      if (!user) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
      return { tokens: (await listApiTokens(deps.store, me.tenantId, user.id)).map(publicToken) };
    }, { params: z.object({ id: Uuid }), response: { 200: TokenList }, detail: { tags, summary: "A user's API tokens (metadata only)" } })

    .delete("/api/users/:id/tokens/:token_id", async (ctx) => {
      const me = await authorize(ctx, "users:write");
      const user = await getUser(deps.store, me.tenantId, ctx.params.id);
      if (!user) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
      await revoke(ctx, me, user.id, ctx.params.token_id, me.userId === user.id ? "self" : "admin");
      ctx.set.status = 204;
    }, { params: z.object({ id: Uuid, token_id: Uuid }), detail: { tags, summary: "Revoke a user's API token (effective at once)" } });
};
