import { Elysia } from "elysia";
import { z } from "zod";
import { ReplayError, timeline } from "../../actors/replay.ts";
import { productKinds } from "../../kinds.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { audit } from "../../audit/audit.ts";

const tags = ["actors"];
/** Which table says which tenant an actor of each product kind belongs to. */
const OWNER_TABLE: Record<string, string> = { machine: "machines", session: "sessions", room: "rooms" };
const MAX_STEPS = 500;
const ActorParams = z.object({ kind: z.string().min(1).max(32), id: z.uuid() });

/** 404 unless `kind/id` is a product actor of the caller's tenant. */
async function ownedActor(deps: AppDeps, tenantId: string, kind: string, id: string): Promise<void> {
  const table = Object.hasOwn(OWNER_TABLE, kind) ? OWNER_TABLE[kind] : undefined;
  if (!table) throw new HttpError(404, "ACTOR_NOT_FOUND", `no actor kind ${JSON.stringify(kind)}; kinds: ${Object.keys(OWNER_TABLE).join(", ")}`);
  const [owned] = await deps.store.query(`select 1 from ${table} where id = $1 and tenant_id = $2`, [id, tenantId]);
  if (!owned) throw new HttpError(404, "ACTOR_NOT_FOUND", "no such actor");
}

/**
 * Replay debugging for people (P7, W1): an actor's history rebuilt from its journal through
 * the pure logic, one step per event with the state and the context diff. Read-only.
 */
export const actorRoutes = (deps: AppDeps) =>
  new Elysia({ name: "actor-routes" })
    .use(requestContext(deps))
    .get("/api/actors/:kind/:id/timeline", async (ctx) => {
      const me = await authorize(ctx, "actors:read");
      await ownedActor(deps, me.tenantId, ctx.params.kind, ctx.params.id);
      try {
        const t = await timeline(deps.store, productKinds, `${ctx.params.kind}/${ctx.params.id}`, { from: ctx.query.from, to: ctx.query.to });
        const truncated = t.steps.length > MAX_STEPS;
        await audit(deps.store, { tenantId: me.tenantId, type: "actor.timeline_read", actor: actorOf(me), target: { type: ctx.params.kind, id: ctx.params.id }, ip: ctx.ip, correlationId: ctx.correlationId });
        return { ...t, steps: t.steps.slice(0, MAX_STEPS), truncated };
      } catch (err) {
        if (err instanceof ReplayError) throw new HttpError(404, "ACTOR_NOT_FOUND", err.message);
        throw err;
      }
    }, {
      params: ActorParams,
      query: z.object({ from: z.coerce.number().int().min(0).optional(), to: z.coerce.number().int().min(0).optional() }),
      detail: { tags, summary: `An actor's history: each journaled event with the state after it, the context diff and the effects (at most ${MAX_STEPS} steps; page with from/to)` },
    })
    // An actor its supervisor stopped as failed stays failed, across restarts too, until an
    // admin revives it (once its cause is fixed): it is then loaded afresh from its durable state.
    // Admin only: settings:write is the admin-only permission for operating the server.
    .post("/api/actors/:kind/:id/revive", async (ctx) => {
      const me = await authorize(ctx, "settings:write");
      await ownedActor(deps, me.tenantId, ctx.params.kind, ctx.params.id);
      const address = `${ctx.params.kind}/${ctx.params.id}`;
      const failed = deps.system.failedActors().find((f) => f.address === address);
      if (!failed || !(await deps.system.revive(address))) throw new HttpError(409, "ACTOR_NOT_FAILED", `${address} is not stopped as failed`);
      await audit(deps.store, {
        tenantId: me.tenantId, type: "actor.revived", actor: actorOf(me), target: { type: ctx.params.kind, id: ctx.params.id },
        ip: ctx.ip, correlationId: ctx.correlationId, details: { failure: failed.failure },
      });
      return { address, revived: true, failure: failed.failure };
    }, {
      params: ActorParams,
      detail: { tags, summary: "Revive an actor stopped as failed: it is loaded again from its durable state with its next message (admin only)" },
    });
