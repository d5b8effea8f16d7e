import type { Serial } from "../actors/serial.ts";
import type { Effect } from "../actors/types.ts";
import { audit } from "../audit/audit.ts";
import type { Logger } from "../log.ts";
import type { ServerToAgent, ServerToViewer } from "../protocol/relay.ts";
import type { Relay } from "../relay/relay.ts";
import { personOf, type Rooms } from "../rooms/service.ts";
import type { Queryable, Store } from "../store/store.ts";

/**
 * The session actor's effects, run once the event that caused them is durable: the sessions row
 * and events (each also audited), written in event order per session (`writes`), and the relay
 * told what to route, send or tear down.
 *
 * `fence`, when the server runs under a lease (src/cluster/lease.ts), runs first in each row
 * write's transaction, as it does for the journal's and presence's (`db` must then be a Store):
 * a primary that lost the lease while its projection waited (a pause longer than the lease's
 * TTL) writes nothing once a standby has taken over, so it cannot put back a state the standby
 * has since projected (reopen an ended session, say).
 */
export function sessionEffects(db: Queryable, relay: Relay, log: Logger, writes: Serial, rooms?: Rooms, fence?: (tx: Queryable) => Promise<void>) {
  // Under a lease, a session event and its audit entry go in one fenced transaction (the audit
  // entry then is not group-committed with others: session events are few).
  const fenced = (write: (q: Queryable) => Promise<void>): Promise<void> =>
    fence
      ? (db as Store).transaction(async (tx) => {
        await fence(tx);
        await write(tx);
      })
      : write(db);
  // Each session has a room (R1): opened with the session, joined by every technician who watches.
  // Its creator owns it, except in an end user's own session: the end user is a member, and
  // nobody owns the room (no one adds or removes members by hand; the session and the end
  // user's grant decide who is in it), so an end user never manages who reads the chat.
  const roomFor = (p: { session_id: string; tenant_id: string; event: string; actor: string | null; details: Record<string, unknown> }) => {
    if (!rooms) return;
    const work = p.event === "session.created"
      ? rooms.openSessionRoom({
        sessionId: p.session_id, tenantId: p.tenant_id, name: `Session (${String(p.details.kind)})`,
        owner: { member: p.actor ?? personOf(p.session_id), user_id: p.actor, name: String(p.details.technician ?? "technician"), role: sessionCreatorRole(String(p.details.kind)) },
        members: p.details.kind === "attended" ? [{ member: personOf(p.session_id), user_id: null, name: "the person at the machine", role: "member" }] : [],
      })
      // A view-only viewer reads the chat on its socket; posting to the room is acting.
      : p.event === "viewer.joined" && p.actor && p.details.access === "control"
        ? rooms.ask(p.session_id, { type: "member.add", member: p.actor, user_id: p.actor, name: String(p.details.name ?? "technician"), role: "member", by: null })
        : null;
    work?.catch((err: Error) => log.warn({ session_id: p.session_id, err: err.message }, "session room not updated"));
  };

  return {
    "session.project": (e: Effect) => writes.run(String((e as Record<string, unknown>).session_id), async () => {
      const p = e as Effect & { session_id: string; state: string | null; end_reason: string | null; consent: string; agent_conn: string | null; attended: { host: string; user: string } | null; viewers: number; started_at: number | null; ended_at: number | null };
      await fenced(async (q) => {
        await q.query(
          `update sessions set state = coalesce($2, state), end_reason = $3, consent = $4, viewers = $5,
                  attended_host = coalesce($6, attended_host), attended_user = coalesce($7, attended_user),
                  started_at = case when $8::bigint is null then null else to_timestamp($8::bigint / 1000.0) end,
                  ended_at = case when $9::bigint is null then null else to_timestamp($9::bigint / 1000.0) end, updated_at = now()
            where id = $1`,
          [p.session_id, p.state, p.end_reason, p.consent, p.viewers, p.attended?.host ?? null, p.attended?.user ?? null, p.started_at, p.ended_at]);
      });
    }),
    "session.event": (e: Effect) => writes.run(String((e as Record<string, unknown>).session_id), async () => {
      const p = e as Effect & { session_id: string; tenant_id: string; event: string; actor: string | null; details: Record<string, unknown>; at: number };
      await fenced(async (q) => {
        await q.query(
          "insert into session_events (tenant_id, session_id, type, actor, details, at) values ($1, $2, $3, $4, $5::text::jsonb, to_timestamp($6::bigint / 1000.0))",
          [p.tenant_id, p.session_id, p.event, p.actor, JSON.stringify(p.details), p.at]);
        await audit(q, {
          tenantId: p.tenant_id, type: `session.${p.event.replace(/^session\./, "")}`,
          outcome: p.event === "consent.denied" ? "failure" : "success",
          actor: p.actor ? { type: "user", id: p.actor } : { type: "system" },
          target: { type: "session", id: p.session_id }, details: p.details,
        });
      });
      roomFor(p);
    }),
    "session.agent": (e: Effect) => {
      const p = e as Effect & { session_id: string; tenant_id: string; machine_id: string | null; conn: string | null; message: ServerToAgent };
      // The agent the actor accepted carries the session's channels from now on.
      if (p.message.t === "session.start") relay.attach(p.session_id, { tenantId: p.tenant_id, machineId: p.machine_id }, p.conn);
      relay.toAgent(p.conn, p.message);
    },
    "session.viewers": (e: Effect) => {
      const p = e as Effect & { session_id: string; message: ServerToViewer };
      relay.broadcast(p.session_id, p.message);
    },
    "session.route": (e: Effect) => {
      const p = e as Effect & { session_id: string; tenant_id: string; machine_id: string | null; conn: string | null; viewer_id: string; req: string; open: Extract<ServerToAgent, { t: "ch.open" }> };
      relay.openRoute({ sessionId: p.session_id, tenantId: p.tenant_id, machineId: p.machine_id, conn: p.conn, viewerId: p.viewer_id, req: p.req, open: p.open });
    },
    "session.closed": (e: Effect) => {
      const p = e as Effect & { session_id: string; conn: string | null; reason: string };
      log.info({ session_id: p.session_id, reason: p.reason }, "session ended");
      relay.endSession(p.session_id, p.conn, p.reason);
    },
  };
}

/** The role of a session's creator in its room: owner, but a member in an end user's own session. */
export const sessionCreatorRole = (kind: string): "owner" | "member" => (kind === "end_user" ? "member" : "owner");
