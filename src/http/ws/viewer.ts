import { Elysia } from "elysia";
import { ROLE_PERMISSIONS, type Role } from "../../auth/roles.ts";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { encode } from "../../protocol/agent.ts";
import { MAX_VIEWER_FRAME, VIEWER_CLOSE } from "../../protocol/relay.ts";
import type { ViewerLink } from "../../relay/relay.ts";
import type { SessionContext } from "../../sessions/session.ts";
import type { ViewerClaims } from "../../sessions/viewer-tokens.ts";
import type { AppDeps } from "../deps.ts";
import { bufferedAmount } from "./buffered.ts";
import { HttpError } from "../errors.ts";

/** How much of a session's chat a joining viewer is sent (the page keeps 500). */
const CHAT_HISTORY = 200;

/**
 * `/ws/viewer?session=<id>&token=<viewer token>` (S3): every check happens before the upgrade,
 * in the order of the reference (signature, expiry, purpose, revocation, then session binding).
 * A login session or API token here is a 401, a viewer token of another session a 403. Frames
 * over 64 KiB are refused. Then the viewer joins the session actor and the relay carries its
 * frames (src/relay/relay.ts).
 */
const Query = z.object({ session: z.uuid(), token: z.string().min(1).max(4096) });

interface Admitted {
  claims: ViewerClaims;
  machineId: string | null;
  /** The session's end user, in an end-user session (their chat is labelled as theirs). */
  endUser: string | null;
  ip: string;
}

export const viewerSocket = (deps: AppDeps) => {
  const admitted = new WeakMap<Request, Admitted>();
  const links = new Map<string, ViewerLink>();
  /** Viewers sent their `joined`: only these may act. */
  const joinedViewers = new Set<string>();

  return new Elysia({ name: "viewer-socket" }).ws("/ws/viewer", {
    async beforeHandle({ request, query, server }) {
      const ip = deps.ips.resolve(server?.requestIP(request)?.address ?? "", request.headers.get("x-forwarded-for"));
      const q = Query.safeParse(query);
      if (!q.success) throw new HttpError(400, "VALIDATION_FAILED", "query: session (uuid) and token are required");
      const verdict = await deps.viewerTokens.verify(deps.store, q.data.token, q.data.session);
      if (!verdict.ok) {
        await audit(deps.store, {
          tenantId: "00000000-0000-0000-0000-000000000001", type: "viewer.refused", outcome: "failure", actor: { type: "anonymous" },
          target: { type: "session", id: q.data.session }, ip, details: { reason: verdict.why },
        }).catch(() => {});
        if (verdict.why === "wrong_session") throw new HttpError(403, "WRONG_SESSION", "this viewer token is for another session");
        throw new HttpError(401, "INVALID_VIEWER_TOKEN", "a viewer token from POST /api/sessions/:id/viewer-token is required");
      }
      const [s] = await deps.store.query<{ machine_id: string | null; kind: string; created_by: string | null; ended_at: unknown; role: Role | null; disabled: boolean | null }>(
        `select s.machine_id, s.kind, s.created_by, s.ended_at, u.role, u.disabled_at is not null as disabled
           from sessions s left join users u on u.id = $3 and u.tenant_id = s.tenant_id
          where s.id = $1 and s.tenant_id = $2`, [q.data.session, verdict.claims.tenantId, verdict.claims.userId]);
      if (!s) throw new HttpError(404, "SESSION_NOT_FOUND", "no such session");
      // The token outlives what it was minted under: its user must still be active, and still of
      // a role that may mint it (a disabled or demoted user's token made before is refused).
      const why = !s.role || s.disabled ? "user_disabled"
        : !ROLE_PERMISSIONS[s.role].has("sessions:write") || (s.role === "end_user") !== (verdict.claims.endUser === true) ? "role_changed" : null;
      if (why) {
        await audit(deps.store, {
          tenantId: verdict.claims.tenantId, type: "viewer.refused", outcome: "failure", actor: { type: "user", id: verdict.claims.userId, name: verdict.claims.name },
          target: { type: "session", id: q.data.session }, ip, details: { reason: why, token_id: verdict.claims.jti },
        }).catch(() => {});
        throw new HttpError(401, "INVALID_VIEWER_TOKEN", "this viewer token's user may no longer view the session");
      }
      if (s.ended_at) throw new HttpError(409, "SESSION_ENDED", "the session has ended");
      admitted.set(request, { claims: verdict.claims, machineId: s.machine_id, endUser: s.kind === "end_user" ? s.created_by : null, ip });
    },
    async open(ws) {
      const a = admitted.get(ws.data.request);
      if (!a) return ws.raw.close(VIEWER_CLOSE.BAD_MESSAGE, "not admitted");
      const viewerId = crypto.randomUUID();
      // `joined` is the viewer's first message: output routed to it while the session takes it
      // waits (a copy: the relay gives terminal frames to the recorder once sent, see Link.send),
      // and anything it sends before then is dropped (see `message`).
      let early: Uint8Array[] | null = [];
      let earlyBytes = 0;
      const link: ViewerLink = {
        viewerId, sessionId: a.claims.session, userId: a.claims.userId, name: a.claims.name, access: a.claims.access, endUser: a.claims.endUser === true,
        send: (frame) => (early ? (early.push(new Uint8Array(frame)), (earlyBytes += frame.byteLength), frame.byteLength) : ws.raw.send(frame)),
        buffered: () => bufferedAmount(ws.raw) + earlyBytes,
        close: (code, reason) => ws.raw.close(code, reason),
      };
      (ws.data as { viewerId?: string }).viewerId = viewerId;
      links.set(viewerId, link);
      deps.relay.addViewer({ tenantId: a.claims.tenantId, machineId: a.machineId, endUser: a.endUser }, link);
      const joined = await deps.system.ask<{ ok: boolean; code?: string }>(`session/${a.claims.session}`, { type: "viewer.joined", viewer_id: viewerId, user_id: a.claims.userId, name: a.claims.name, access: a.claims.access })
        .catch(() => null);
      if (!joined?.reply?.ok) {
        deps.relay.removeViewer(a.claims.session, viewerId);
        // 4100 is final for the page: only for a session that has ended. A timeout, a full
        // mailbox or a refusal for now is worth retrying.
        const code = joined?.reply?.code;
        if (code === "SESSION_ENDED" || (!joined && (await sessionEnded(deps, a.claims.session)))) return ws.raw.close(VIEWER_CLOSE.SESSION_ENDED, "SESSION_ENDED");
        if (!deps.system.ready) return ws.raw.close(VIEWER_CLOSE.SERVER_STOPPING, "server stopping");
        return ws.raw.close(1011, code ?? "session unavailable");
      }
      const c = joined.context as SessionContext;
      ws.raw.send(encode({
        t: "joined", session: a.claims.session, viewer_id: viewerId, access: a.claims.access, state: String(joined.value),
        viewers: Object.values(c.viewers), channels: Object.values(c.channels).map(({ opened_at: _o, ...ch }) => ch),
      } as never));
      for (const frame of early) ws.raw.send(frame);
      early = null;
      earlyBytes = 0;
      if (links.has(viewerId)) joinedViewers.add(viewerId); // unless it closed meanwhile
      // Registered with the relay before this read: a message committed after it arrives live, and the page drops doubles by id.
      const history = await deps.rooms.sessionChatHistory(a.claims.session, CHAT_HISTORY).catch((err: Error) => {
        deps.log.warn({ session_id: a.claims.session, err: err.message }, "session chat history not read; the viewer gets new messages only");
        return [];
      });
      deps.relay.chatHistory(a.claims.session, viewerId, history);
    },
    async message(ws, raw) {
      const link = links.get((ws.data as { viewerId?: string }).viewerId ?? "");
      if (!link || !joinedViewers.has(link.viewerId)) return; // not joined yet: nothing to act on
      const frame = raw instanceof Uint8Array ? raw : null;
      if (!frame) return ws.raw.close(VIEWER_CLOSE.BAD_MESSAGE, "binary frames only");
      if (frame.byteLength > MAX_VIEWER_FRAME) return ws.raw.close(1009, "frame too large");
      if (!(await deps.relay.fromViewer(link, frame))) ws.raw.close(VIEWER_CLOSE.BAD_MESSAGE, "not a protocol message");
    },
    close(ws) {
      const viewerId = (ws.data as { viewerId?: string }).viewerId;
      const link = viewerId ? links.get(viewerId) : undefined;
      if (!link) return;
      links.delete(link.viewerId);
      joinedViewers.delete(link.viewerId);
      deps.relay.removeViewer(link.sessionId, link.viewerId);
    },
  });
};

/** Whether the session is ended in the database (false if that cannot be read either). */
async function sessionEnded(deps: AppDeps, sessionId: string): Promise<boolean> {
  const rows = await deps.store.query<{ ended_at: unknown }>("select ended_at from sessions where id = $1", [sessionId]).catch(() => []);
  return !!rows[0]?.ended_at;
}
