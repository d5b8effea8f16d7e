import { Elysia } from "elysia";
import type { RuntimeMetrics } from "../actors/metrics.ts";
import type { ActorSystem } from "../actors/system.ts";
import type { Store } from "../store/store.ts";

/**
 * Operability: `/healthz` says the process is alive; `/readyz` that the store answers and
 * recovery is done (failed actors are listed, and do not make the whole server unready);
 * `/metrics` is Prometheus text.
 */
export const health = (deps: { system: ActorSystem; store: Store; metrics: RuntimeMetrics; role: () => string; leaseFresh?: () => boolean }) =>
  new Elysia({ name: "health" })
    .get("/healthz", () => ({ status: "ok" }))
    .get("/readyz", async ({ set }) => {
      const storeOk = await Promise.race([
        deps.store.query("select 1").then(() => true, () => false),
        Bun.sleep(2_000).then(() => false),
      ]);
      const leaseOk = deps.leaseFresh?.() ?? true;
      const ready = storeOk && deps.system.ready && leaseOk;
      set.status = ready ? 200 : 503;
      return {
        status: ready ? "ready" : "unavailable",
        role: deps.role(),
        checks: { store: storeOk ? "ok" : "unreachable", recovery: deps.system.ready ? "done" : "pending", ...(deps.leaseFresh ? { lease: leaseOk ? "held" : "not renewed" } : {}) },
        failed_actors: deps.system.failedActors(),
      };
    })
    .get("/metrics", async ({ set }) => {
      set.headers["content-type"] = deps.metrics.registry.contentType;
      return deps.metrics.registry.metrics();
    });
