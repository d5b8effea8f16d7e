import { Elysia } from "elysia";
import { queryAudit } from "../../audit/audit.ts";
import { AuditPage, AuditQuery } from "../../protocol/audit.ts";
import { authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";

const tags = ["audit"];

/** The audit log (A7): filtered, newest first, cursor-paginated. Admins and auditors. */
export const auditRoutes = (deps: AppDeps) =>
  new Elysia({ name: "audit-routes" })
    .use(requestContext(deps))
    .get("/api/audit", async (ctx) => {
      const me = await authorize(ctx, "audit:read");
      const q = ctx.query;
      const page = await queryAudit(deps.store, me.tenantId, {
        type: q.type, actor: q.actor, target: q.target, outcome: q.outcome,
        from: q.from ? new Date(q.from) : undefined, to: q.to ? new Date(q.to) : undefined,
        cursor: q.cursor, limit: q.limit,
      });
      // The column's check constraint allows these two only.
      return { ...page, events: page.events.map((e) => ({ ...e, outcome: e.outcome as "success" | "failure" })) };
    }, { query: AuditQuery, response: { 200: AuditPage }, detail: { tags, summary: "Security events, newest first; pass next_cursor as cursor for the next page" } });
