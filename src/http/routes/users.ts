import { Elysia } from "elysia";
import { revokeUserApiTokens } from "../../auth/api-tokens.ts";
import { VIEWER_CLOSE } from "../../protocol/relay.ts";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { getSettings, restrictUserSessionsLackingTotp } from "../../auth/settings.ts";
import { countAdmins, createUser, getUser, listUsers, publicUser, revokeSessions, setPassword, updateUser, UsernameTakenError } from "../../auth/users.ts";
import { CreateUserRequest, ResetPasswordRequest, Role, UpdateUserRequest, User, Uuid } from "../../protocol/accounts.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { endSessionsOnLostAccess } from "../../sessions/access-lost.ts";

const tags = ["users"];
const IdParams = z.object({ id: Uuid });

/** Users of the caller's tenant (A1): create, list, change role, disable, reset password. */
export const userRoutes = (deps: AppDeps) =>
  new Elysia({ name: "user-routes" })
    .use(requestContext(deps))
    .get("/api/users", async (ctx) => {
      const me = await authorize(ctx, "users:read");
      return { users: (await listUsers(deps.store, me.tenantId, ctx.query.role)).map(publicUser) };
    }, { query: z.object({ role: Role.optional() }), response: { 200: z.object({ users: z.array(User) }) }, detail: { tags, summary: "List users" } })

    .post("/api/users", async (ctx) => {
      const me = await authorize(ctx, "users:write");
      const { body } = ctx;
      let user;
      try {
        user = await createUser(deps.store, me.tenantId, { username: body.username, displayName: body.display_name, role: body.role, password: body.password });
      } catch (err) {
        if (err instanceof UsernameTakenError) throw new HttpError(409, "USERNAME_TAKEN", "that username is taken");
        throw err;
      }
      await audit(deps.store, { tenantId: me.tenantId, type: "user.created", actor: actorOf(me), target: { type: "user", id: user.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { username: user.username, role: user.role } });
      ctx.set.status = 201;
      return publicUser(user);
    }, { body: CreateUserRequest, response: { 201: User }, detail: { tags, summary: "Create a user" } })

    .get("/api/users/:id", async (ctx) => {
      const me = await authorize(ctx, "users:read");
      const user = await getUser(deps.store, me.tenantId, ctx.params.id);
      if (!user) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
      return publicUser(user);
    }, { params: IdParams, response: { 200: User }, detail: { tags, summary: "One user" } })

    .patch("/api/users/:id", async (ctx) => {
      const me = await authorize(ctx, "users:write");
      const { body, params } = ctx;
      // Read, check and write under the tenant's row lock: two admins demoting or disabling each
      // other at once must not both pass the last-admin check and leave the tenant with none.
      const { before, user } = await deps.store.transaction(async (tx) => {
        await tx.query("select id from tenants where id = $1 for no key update", [me.tenantId]); // not FOR UPDATE: inserts referencing the tenant (FOR KEY SHARE) go on
        const before = await getUser(tx, me.tenantId, params.id);
        if (!before) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
        const demotesAdmin = before.role === "admin" && before.disabled_at === null && ((body.role && body.role !== "admin") || body.disabled === true);
        if (demotesAdmin && (await countAdmins(tx, me.tenantId)) <= 1) throw new HttpError(409, "LAST_ADMIN", "this is the last active admin");
        const user = (await updateUser(tx, me.tenantId, params.id, { displayName: body.display_name, role: body.role, disabled: body.disabled }))!;
        return { before, user };
      });
      // A new role or a disabled account takes effect on every credential at once.
      if (body.disabled === true) await revokeSessions(deps.store, user.id);
      // Moved into a role the policy requires a second factor for, without one: restricted (its
      // sessions at once, its tokens on their next check; src/auth/credentials.ts).
      let restricted = false;
      if (body.role && body.role !== before.role) {
        const { require_totp_roles } = await getSettings(deps.store, me.tenantId);
        restricted = require_totp_roles.includes(body.role) && user.totp_confirmed_at === null;
        if (restricted) await restrictUserSessionsLackingTotp(deps.store, me.tenantId, user.id);
      }
      // End users may not hold API tokens (minting is open to every role but end_user): a user
      // moved there loses the ones they minted before.
      const tokensRevoked = body.role === "end_user" && before.role !== "end_user" ? await revokeUserApiTokens(deps.store, me.tenantId, user.id) : null;
      deps.verifier.forgetUser(user.id);
      // Room streams and viewer sockets check their credential only at connect: a disabled or
      // newly restricted user's streams end now, in every room; a disabled user's viewers too,
      // and a new role's viewers join again under it.
      if (body.disabled === true || restricted) deps.rooms.hub.closeUser(user.id);
      if (body.disabled === true || (body.role && body.role !== before.role)) {
        deps.relay.closeViewersOf(me.tenantId, user.id, VIEWER_CLOSE.ACCESS_REVOKED, body.disabled === true ? "the user was disabled" : "the user's role changed");
      }
      if (before.role === "end_user" && (body.disabled === true || (body.role && body.role !== "end_user"))) {
        await endSessionsOnLostAccess(deps, me.tenantId, { endUser: user.id });
      }
      const changes: Record<string, unknown> = {};
      if (body.role && body.role !== before.role) changes.role = { from: before.role, to: body.role };
      if (tokensRevoked !== null) changes.api_tokens_revoked = tokensRevoked;
      if (body.display_name && body.display_name !== before.display_name) changes.display_name = body.display_name;
      if (body.disabled !== undefined && body.disabled !== (before.disabled_at !== null)) changes.disabled = body.disabled;
      const type = changes.disabled === true ? "user.disabled" : changes.disabled === false ? "user.enabled" : "user.updated";
      await audit(deps.store, { tenantId: me.tenantId, type, actor: actorOf(me), target: { type: "user", id: user.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: changes });
      return publicUser(user);
    }, { params: IdParams, body: UpdateUserRequest, response: { 200: User }, detail: { tags, summary: "Change a user's name or role, disable or enable them" } })

    .post("/api/users/:id/password", async (ctx) => {
      const me = await authorize(ctx, "users:write");
      const user = await getUser(deps.store, me.tenantId, ctx.params.id);
      if (!user) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
      await setPassword(deps.store, me.tenantId, user.id, ctx.body.password);
      const ended = await revokeSessions(deps.store, user.id);
      deps.verifier.forgetUser(user.id);
      deps.rooms.hub.closeUser(user.id, { kind: "session" });
      deps.relay.closeViewersOf(me.tenantId, user.id, VIEWER_CLOSE.ACCESS_REVOKED, "the user's password was reset");
      await audit(deps.store, { tenantId: me.tenantId, type: "user.password_reset", actor: actorOf(me), target: { type: "user", id: user.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { sessions_ended: ended } });
      ctx.set.status = 204;
    }, { params: IdParams, body: ResetPasswordRequest, detail: { tags, summary: "Reset a user's password (ends their sessions)" } });
