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

/**
 * Replay debugging for people (P7, W1): an actor's history rebuilt from its journal through
 * the pure logic, one step per event with the state and the context diff. Read-only.
 */
export const actorRoutes = (deps: AppDeps) =>
  new Elysia({ name: "actor-routes" })
    .use(requestContext(deps))
    .get("/api/actors/:kind/:id/timeline", async (ctx) => {
      const me = await authorize(ctx, "actors:read");
      const table = Object.hasOwn(OWNER_TABLE, ctx.params.kind) ? OWNER_TABLE[ctx.params.kind] : undefined;
      if (!table) throw new HttpError(404, "ACTOR_NOT_FOUND", `no actor kind ${JSON.stringify(ctx.params.kind)}; kinds: ${Object.keys(OWNER_TABLE).join(", ")}`);
      const [owned] = await deps.store.query(`select 1 from ${table} where id = $1 and tenant_id = $2`, [ctx.params.id, me.tenantId]);
      if (!owned) throw new HttpError(404, "ACTOR_NOT_FOUND", "no such actor");
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
      params: z.object({ kind: z.string().min(1).max(32), id: z.uuid() }),
      query: z.object({ from: z.coerce.number().int().min(0).optional(), to: z.coerce.number().int().min(0).optional() }),
      detail: { tags, summary: `An actor's history: each journaled event with the state after it, the context diff and the effects (at most ${MAX_STEPS} steps; page with from/to)` },
    });
