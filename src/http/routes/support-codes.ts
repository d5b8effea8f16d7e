import { Elysia } from "elysia";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { CreateSupportCodeRequest, SupportCode } from "../../protocol/sessions.ts";
import { insertSession } from "../../sessions/sessions.ts";
import { cancelSupportCode, createSupportCode } from "../../sessions/support-codes.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { publicUrl } from "../public-url.ts";
import { displayName } from "./sessions.ts";

const tags = ["sessions"];

/**
 * Support codes (S2): a technician creates one for an attended session (which exists from that
 * moment, waiting for the person's agent, consent required) and reads it to the person, who
 * runs the agent with it. Cancelling the code ends the session.
 */
export const supportCodeRoutes = (deps: AppDeps) =>
  new Elysia({ name: "support-code-routes" })
    .use(requestContext(deps))
    .post("/api/support-codes", async (ctx) => {
      const me = await authorize(ctx, "support_codes:write");
      const ttlMs = ctx.body.expires_in_s * 1000;
      const sessionId = crypto.randomUUID();
      await insertSession(deps.store, { id: sessionId, tenantId: me.tenantId, kind: "attended", machineId: null, createdBy: me.userId, technician: displayName(me), consent: "required" });
      await deps.system.ask(`session/${sessionId}`, {
        type: "session.create", tenant_id: me.tenantId, kind: "attended", machine_id: null, technician: { user_id: me.userId, name: displayName(me) },
        consent_required: true, wait_ms: ttlMs, grace_ms: deps.config.sessionGraceMs, consent_ms: deps.config.consentTimeoutMs,
      });
      const expiresAt = new Date(Date.now() + ttlMs);
      const code = await createSupportCode(deps.store, { tenantId: me.tenantId, userId: me.userId, technician: displayName(me), sessionId, expiresAt });
      await audit(deps.store, { tenantId: me.tenantId, type: "support_code.created", actor: actorOf(me), target: { type: "session", id: sessionId }, ip: ctx.ip, correlationId: ctx.correlationId, details: { expires_at: expiresAt.toISOString() } });
      const server = publicUrl(deps.config, ctx.request);
      ctx.set.status = 201;
      return {
        code, session_id: sessionId, expires_at: expiresAt.toISOString(),
        command: `curl -fsSL ${server}/api/agent/binary -o tether-agent && chmod +x tether-agent && ./tether-agent --server ${server} --code ${code}`,
      };
    }, { body: CreateSupportCodeRequest, response: { 201: SupportCode }, detail: { tags, summary: "Create a support code (and its attended session); the code is shown once" } })

    .post("/api/support-codes/:code/cancel", async (ctx) => {
      const me = await authorize(ctx, "support_codes:write");
      const sessionId = await cancelSupportCode(deps.store, me.tenantId, ctx.params.code);
      if (!sessionId) throw new HttpError(404, "SUPPORT_CODE_NOT_FOUND", "no open support code like that");
      await deps.system.ask(`session/${sessionId}`, { type: "session.end", by: "technician", user_id: me.userId });
      await deps.sessionWrites.settled(sessionId); // so a read right after sees it ended
      await audit(deps.store, { tenantId: me.tenantId, type: "support_code.cancelled", actor: actorOf(me), target: { type: "session", id: sessionId }, ip: ctx.ip, correlationId: ctx.correlationId });
      return { cancelled: true, session_id: sessionId };
    }, {
      params: z.object({ code: z.string().regex(/^\d{6}$/, "6 digits") }),
      response: { 200: z.object({ cancelled: z.boolean(), session_id: z.string() }) },
      detail: { tags, summary: "Cancel an unused support code; its session ends" },
    });
