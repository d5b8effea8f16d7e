import { Elysia } from "elysia";
import { z } from "zod";
import type { Principal } from "../../auth/principal.ts";
import { endUserMayReach } from "../../machines/grants.ts";
import { getMachine } from "../../machines/machines.ts";
import { Uuid } from "../../protocol/accounts.ts";
import { CreateSessionRequest, ListSessionsQuery, Session, SessionEvent, ViewerToken, ViewerTokenRequest } from "../../protocol/sessions.ts";
import { getSession, insertSession, listSessions, publicSession, sessionEvents, sessionsToSupersede } from "../../sessions/sessions.ts";
import { ViewerTokens } from "../../sessions/viewer-tokens.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { publicUrl } from "../public-url.ts";
import { audit } from "../../audit/audit.ts";

const tags = ["sessions"];
const IdParams = z.object({ id: Uuid });
const notFound = () => new HttpError(404, "SESSION_NOT_FOUND", "no such session");

/** The name a technician is shown as, to the person at the machine and to other viewers. */
export const displayName = (me: Principal) => me.username;

/**
 * Ends the caller's idle sessions of the machine that the new one supersedes (see
 * sessionsToSupersede). Best effort: a failure is logged, and those sessions end at their own
 * timeouts; the session actor refuses if a viewer joined meanwhile.
 */
async function supersedeIdle(deps: AppDeps, me: Principal, machineId: string, newId: string): Promise<void> {
  try {
    const old = await sessionsToSupersede(deps.store, { tenantId: me.tenantId, machineId, userId: me.userId, newId });
    await Promise.all(old.map(async (id) => {
      await deps.system.ask(`session/${id}`, { type: "session.end", by: "superseded", user_id: me.userId });
      await deps.sessionWrites.settled(id);
    }));
  } catch (err) {
    deps.log.warn({ machine_id: machineId, err: (err as Error).message }, "idle sessions not superseded; they end at their own timeouts");
  }
}

/**
 * Sessions (S1, S3, S8): open one on a machine (unattended, or end_user on one's own granted
 * machine), list and read them with their events, end them, and mint the short-lived viewer
 * token the viewer socket takes. Attended sessions start from a support code (support-codes.ts).
 */
export const sessionRoutes = (deps: AppDeps) =>
  new Elysia({ name: "session-routes" })
    .use(requestContext(deps))
    .post("/api/sessions", async (ctx) => {
      const me = await authorize(ctx, "sessions:write");
      const machine = await getMachine(deps.store, me, ctx.body.machine_id);
      if (!machine) throw new HttpError(404, "MACHINE_NOT_FOUND", "no such machine");
      if (machine.enrollment_state !== "active") throw new HttpError(409, "MACHINE_PENDING", "the machine is waiting for approval");
      if (machine.disabled_at) throw new HttpError(409, "MACHINE_DISABLED", "the machine is disabled");
      const kind = me.role === "end_user" ? "end_user" : "unattended";
      const [site] = machine.site_id ? await deps.store.query<{ require_consent: boolean }>("select require_consent from sites where id = $1", [machine.site_id]) : [];
      const consentRequired = kind === "unattended" && Boolean(site?.require_consent);
      const id = crypto.randomUUID();
      await insertSession(deps.store, { id, tenantId: me.tenantId, kind, machineId: machine.id, createdBy: me.userId, technician: displayName(me), consent: consentRequired ? "required" : "not_required" });
      await deps.system.ask(`session/${id}`, {
        type: "session.create", tenant_id: me.tenantId, kind, machine_id: machine.id, technician: { user_id: me.userId, name: displayName(me) },
        consent_required: consentRequired, wait_ms: deps.config.sessionWaitMs, grace_ms: deps.config.sessionGraceMs, consent_ms: deps.config.consentTimeoutMs,
      });
      // Access lost between the check above and the create (a grant taken back, the machine
      // removed or disabled) ended nothing, since the session did not exist yet: end it now.
      const still = await getMachine(deps.store, me, machine.id);
      if (!still || still.disabled_at) {
        await deps.system.ask(`session/${id}`, { type: "session.end", by: "removal" });
        await deps.sessionWrites.settled(id);
        throw still ? new HttpError(409, "MACHINE_DISABLED", "the machine is disabled") : new HttpError(404, "MACHINE_NOT_FOUND", "no such machine");
      }
      // Before the agent hears of the new one: the sessions it supersedes free their places there.
      await supersedeIdle(deps, me, machine.id, id);
      // The machine's agent, if connected now, joins at once; otherwise when it next connects.
      const conn = deps.connections.connOf(machine.id);
      if (conn && deps.relay.hasAgent(conn)) await deps.system.ask(`session/${id}`, { type: "agent.attached", conn });
      await deps.sessionWrites.settled(id);
      await audit(deps.store, { tenantId: me.tenantId, type: "session.requested", actor: actorOf(me), target: { type: "session", id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { machine_id: machine.id, kind } });
      ctx.set.status = 201;
      return publicSession((await getSession(deps.store, me, id))!);
    }, { body: CreateSessionRequest, response: { 201: Session }, detail: { tags, summary: "Open a session on a machine (unattended; end_user on one's own granted machine)" } })

    .get("/api/sessions", async (ctx) => {
      const me = await authorize(ctx, "sessions:read");
      return { sessions: (await listSessions(deps.store, me, ctx.query)).map(publicSession) };
    }, { query: ListSessionsQuery, response: { 200: z.object({ sessions: z.array(Session) }) }, detail: { tags, summary: "List sessions, newest first (an end user: their own)" } })

    .get("/api/sessions/:id", async (ctx) => {
      const me = await authorize(ctx, "sessions:read");
      const s = await getSession(deps.store, me, ctx.params.id);
      if (!s) throw notFound();
      return publicSession(s);
    }, { params: IdParams, response: { 200: Session }, detail: { tags, summary: "One session" } })

    .get("/api/sessions/:id/events", async (ctx) => {
      const me = await authorize(ctx, "sessions:read");
      if (!(await getSession(deps.store, me, ctx.params.id))) throw notFound();
      return { events: await sessionEvents(deps.store, me.tenantId, ctx.params.id, ctx.query.after, ctx.query.limit) };
    }, {
      params: IdParams,
      query: z.object({ after: z.coerce.number().int().min(0).default(0), limit: z.coerce.number().int().min(1).max(1000).default(200) }),
      response: { 200: z.object({ events: z.array(SessionEvent) }) },
      detail: { tags, summary: "The session's events in order: start, consent, viewers, channels, files, commands, end" },
    })

    .post("/api/sessions/:id/end", async (ctx) => {
      const me = await authorize(ctx, "sessions:write");
      const s = await getSession(deps.store, me, ctx.params.id);
      if (!s) throw notFound();
      const { reply } = await deps.system.ask<{ ok: boolean; code?: string }>(`session/${s.id}`, { type: "session.end", by: me.role === "end_user" ? "end_user" : "technician", user_id: me.userId });
      if (!reply?.ok) throw new HttpError(409, reply?.code ?? "SESSION_ENDED", "the session has already ended");
      await deps.sessionWrites.settled(s.id);
      return publicSession((await getSession(deps.store, me, s.id))!);
    }, { params: IdParams, response: { 200: Session }, detail: { tags, summary: "End a session (the agent closes its channels; viewers are disconnected)" } })

    .post("/api/sessions/:id/viewer-token", async (ctx) => {
      const me = await authorize(ctx, "sessions:write");
      const s = await getSession(deps.store, me, ctx.params.id);
      if (!s) throw notFound();
      if (s.ended_at) throw new HttpError(409, "SESSION_ENDED", "the session has ended");
      // An end user's own session stays readable, but reaching the machine again needs the grant still.
      if (me.role === "end_user" && !(s.machine_id && (await endUserMayReach(deps.store, me, s.machine_id)))) {
        throw new HttpError(403, "MACHINE_NOT_GRANTED", "this machine is no longer granted to you");
      }
      const { token, claims } = await deps.viewerTokens.mint({ session: s.id, access: ctx.body.access, userId: me.userId, name: displayName(me), tenantId: me.tenantId, endUser: me.role === "end_user" });
      await audit(deps.store, { tenantId: me.tenantId, type: "viewer_token.minted", actor: actorOf(me), target: { type: "session", id: s.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { token_id: claims.jti, access: claims.access } });
      const ws = publicUrl(deps.config, ctx.request).replace(/^http/, "ws");
      ctx.set.status = 201;
      return { token, token_id: claims.jti, access: claims.access, expires_at: new Date(claims.expiresAt).toISOString(), url: `${ws}/ws/viewer?session=${s.id}&token=${token}` };
    }, { params: IdParams, body: ViewerTokenRequest, response: { 201: ViewerToken }, detail: { tags, summary: "Mint a viewer token (5 minutes, this session, control or view)" } })

    .delete("/api/sessions/:id/viewer-tokens/:token_id", async (ctx) => {
      const me = await authorize(ctx, "sessions:write");
      const s = await getSession(deps.store, me, ctx.params.id);
      if (!s) throw notFound();
      await ViewerTokens.revoke(deps.store, ctx.params.token_id, s.id, Date.now() + 10 * 60_000);
      await audit(deps.store, { tenantId: me.tenantId, type: "viewer_token.revoked", actor: actorOf(me), target: { type: "session", id: s.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { token_id: ctx.params.token_id } });
      ctx.set.status = 204;
    }, { params: z.object({ id: Uuid, token_id: Uuid }), detail: { tags, summary: "Revoke a viewer token before it expires (it is refused from then on)" } });
