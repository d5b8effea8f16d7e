import { Elysia } from "elysia";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { grantMachine, listGrants, publicGrant, revokeGrant } from "../../machines/grants.ts";
import { getUser } from "../../auth/users.ts";
import { Uuid } from "../../protocol/accounts.ts";
import { CreateGrantRequest, Grant } from "../../protocol/machines.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { endSessionsOnLostAccess, leaveSessionRoomsOnLostGrant } from "../../sessions/access-lost.ts";

const tags = ["grants"];
const IdParams = z.object({ id: Uuid });
const GrantParams = z.object({ id: Uuid, machine_id: Uuid });

/** The machines an end user may reach (A9): same tenant, checked when granted and again at use. */
export const grantRoutes = (deps: AppDeps) =>
  new Elysia({ name: "grant-routes" })
    .use(requestContext(deps))
    .get("/api/users/:id/grants", async (ctx) => {
      const me = await authorize(ctx, "users:read");
      if (!(await getUser(deps.store, me.tenantId, ctx.params.id))) throw new HttpError(404, "USER_NOT_FOUND", "no such user");
      return { grants: (await listGrants(deps.store, me.tenantId, ctx.params.id)).map(publicGrant) };
    }, { params: IdParams, response: { 200: z.object({ grants: z.array(Grant) }) }, detail: { tags, summary: "The machines granted to a user" } })

    .post("/api/users/:id/grants", async (ctx) => {
      const me = await authorize(ctx, "grants:write");
      const result = await grantMachine(deps.store, me.tenantId, ctx.params.id, ctx.body.machine_id, me.userId);
      if (!result.ok) {
        if (result.reason === "user_not_found") throw new HttpError(404, "USER_NOT_FOUND", "no such user");
        if (result.reason === "not_end_user") throw new HttpError(409, "NOT_AN_END_USER", "only end users get machine grants; other roles reach machines by their role");
        throw new HttpError(404, "MACHINE_NOT_FOUND", "no such machine");
      }
      if (result.created) {
        await audit(deps.store, { tenantId: me.tenantId, type: "grant.created", actor: actorOf(me), target: { type: "user", id: ctx.params.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { machine_id: ctx.body.machine_id, hostname: result.grant.hostname } });
      }
      ctx.set.status = result.created ? 201 : 200;
      return publicGrant(result.grant);
    }, { params: IdParams, body: CreateGrantRequest, response: { 200: Grant, 201: Grant }, detail: { tags, summary: "Grant an end user a machine (201; 200 when it already was)" } })

    .delete("/api/users/:id/grants/:machine_id", async (ctx) => {
      const me = await authorize(ctx, "grants:write");
      const { id, machine_id } = ctx.params;
      if (!(await revokeGrant(deps.store, me.tenantId, id, machine_id))) throw new HttpError(404, "GRANT_NOT_FOUND", "no such grant");
      await audit(deps.store, { tenantId: me.tenantId, type: "grant.revoked", actor: actorOf(me), target: { type: "user", id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { machine_id } });
      await endSessionsOnLostAccess(deps, me.tenantId, { endUser: id, machineId: machine_id });
      await leaveSessionRoomsOnLostGrant(deps, me.tenantId, id, machine_id);
      ctx.set.status = 204;
    }, { params: GrantParams, detail: { tags, summary: "Take a machine back from an end user" } });
