import { Elysia } from "elysia";
import { audit } from "../../audit/audit.ts";
import { getSettings, publicSettings, restrictSessionsLackingTotp, updateSettings } from "../../auth/settings.ts";
import { Settings, UpdateSettingsRequest } from "../../protocol/settings.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";

const tags = ["settings"];

/**
 * The tenant's security policy (A3): which roles must have a second factor. A user of such a
 * role without one gets a restricted session at login (enrollment only); sessions already open
 * are restricted the moment the policy changes, and so are such a user's API tokens (they then
 * do nothing but read /api/me until the user enrolls a second factor).
 */
export const settingsRoutes = (deps: AppDeps) =>
  new Elysia({ name: "settings-routes" })
    .use(requestContext(deps))
    .get("/api/settings", async (ctx) => {
      const me = await authorize(ctx, "settings:read");
      return publicSettings(await getSettings(deps.store, me.tenantId));
    }, { response: { 200: Settings }, detail: { tags, summary: "The security policy" } })

    .patch("/api/settings", async (ctx) => {
      const me = await authorize(ctx, "settings:write");
      const { body } = ctx;
      const before = await getSettings(deps.store, me.tenantId);
      if (body.require_totp_roles === undefined) return publicSettings(before);
      const roles = [...new Set(body.require_totp_roles)].sort();
      const after = await updateSettings(deps.store, me.tenantId, { requireTotpRoles: roles });
      const added = roles.filter((r) => !before.require_totp_roles.includes(r));
      const restrictedUsers = await restrictSessionsLackingTotp(deps.store, me.tenantId, added);
      for (const userId of restrictedUsers) deps.verifier.forgetUser(userId);
      // A restricted session may only enroll a second factor: its room streams end too.
      for (const userId of restrictedUsers) deps.rooms.hub.closeUser(userId, { kind: "session" });
      // Their API tokens are restricted as well (src/auth/credentials.ts): at once, streams included.
      const tokenHolders = added.length === 0 ? [] : await deps.store.query<{ user_id: string }>(
        `select distinct t.user_id from api_tokens t join users u on u.id = t.user_id
          where t.tenant_id = $1 and u.tenant_id = $1 and u.role = any($2::text[]) and u.totp_confirmed_at is null and t.revoked_at is null and t.expires_at > now()`,
        [me.tenantId, added]);
      for (const { user_id } of tokenHolders) {
        deps.verifier.forgetUser(user_id);
        deps.rooms.hub.closeUser(user_id, { kind: "api_token" });
      }
      await audit(deps.store, {
        tenantId: me.tenantId, type: "settings.updated", actor: actorOf(me), target: { type: "tenant", id: me.tenantId }, ip: ctx.ip, correlationId: ctx.correlationId,
        details: { require_totp_roles: { from: before.require_totp_roles, to: after.require_totp_roles }, users_restricted: restrictedUsers.length },
      });
      return publicSettings(after);
    }, { body: UpdateSettingsRequest, response: { 200: Settings }, detail: { tags, summary: "Change the security policy" } });
