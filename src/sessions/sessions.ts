import { iso, isoOrNull } from "../machines/rows.ts";
import type { Viewer } from "../machines/machines.ts";
import type { Queryable } from "../store/store.ts";

/**
 * Session rows: the session actors' projection, for lists, the API and the viewer socket's
 * checks. An end user sees only the sessions they opened.
 */
export interface SessionRow {
  id: string;
  tenant_id: string;
  kind: "attended" | "unattended" | "end_user";
  machine_id: string | null;
  hostname: string | null;
  attended_host: string | null;
  created_by: string | null;
  technician: string;
  state: string;
  end_reason: string | null;
  consent: string;
  viewers: number;
  created_at: Date | string;
  started_at: Date | string | null;
  ended_at: Date | string | null;
}

const SELECT = `select s.id, s.tenant_id, s.kind, s.machine_id, m.hostname, s.attended_host, s.created_by, s.technician, s.state,
       s.end_reason, s.consent, s.viewers, s.created_at, s.started_at, s.ended_at
  from sessions s left join machines m on m.id = s.machine_id`;
const VISIBLE = "s.tenant_id = $1 and (not $3::boolean or s.created_by = $2::uuid)";

export function publicSession(s: SessionRow) {
  return {
    id: s.id,
    kind: s.kind,
    machine_id: s.machine_id,
    hostname: s.hostname ?? s.attended_host,
    technician: s.technician,
    created_by: s.created_by,
    state: s.state as never,
    end_reason: s.end_reason as never,
    consent: s.consent as never,
    viewers: Number(s.viewers),
    created_at: iso(s.created_at),
    started_at: isoOrNull(s.started_at),
    ended_at: isoOrNull(s.ended_at),
  };
}

export async function insertSession(db: Queryable, r: { id: string; tenantId: string; kind: string; machineId: string | null; createdBy: string | null; technician: string; consent: string }): Promise<void> {
  await db.query(
    "insert into sessions (id, tenant_id, kind, machine_id, created_by, technician, state, consent) values ($1, $2, $3, $4, $5, $6, 'waiting_for_agent', $7)",
    [r.id, r.tenantId, r.kind, r.machineId, r.createdBy, r.technician, r.consent]);
}

export async function getSession(db: Queryable, viewer: Viewer, id: string): Promise<SessionRow | null> {
  const [row] = await db.query<SessionRow>(`${SELECT} where ${VISIBLE} and s.id = $4`, [viewer.tenantId, viewer.userId, viewer.role === "end_user", id]);
  return row ?? null;
}

export async function listSessions(db: Queryable, viewer: Viewer, f: { state?: string; live?: "true" | "false"; machine_id?: string; kind?: string; limit: number; before?: string }): Promise<SessionRow[]> {
  const params: unknown[] = [viewer.tenantId, viewer.userId, viewer.role === "end_user"];
  const where = [VISIBLE];
  const add = (sql: string, v: unknown) => (params.push(v), where.push(sql.replace("?", `$${params.length}`)));
  if (f.state) add("s.state = ?", f.state);
  if (f.live === "true") where.push("s.ended_at is null");
  if (f.live === "false") where.push("s.ended_at is not null");
  if (f.machine_id) add("s.machine_id = ?", f.machine_id);
  if (f.kind) add("s.kind = ?", f.kind);
  // As the ISO text of a Date: PostgreSQL does not read every offset ISO 8601 allows (+23:59).
  if (f.before) add("s.created_at < ?::timestamptz", new Date(f.before).toISOString());
  params.push(f.limit);
  return db.query<SessionRow>(`${SELECT} where ${where.join(" and ")} order by s.created_at desc, s.id limit $${params.length}`, params);
}

/** Sessions of a machine not yet ended: what a reconnecting agent resumes. */
export async function liveSessionsOfMachine(db: Queryable, machineId: string): Promise<string[]> {
  const rows = await db.query<{ id: string }>("select id from sessions where machine_id = $1 and ended_at is null", [machineId]);
  return rows.map((r) => r.id);
}

/**
 * How long a session must have gone without a viewer (and without any other change) before its
 * technician's next session on the same machine supersedes it.
 */
export const SUPERSEDE_IDLE_MS = 60_000;

/**
 * The sessions a new one supersedes (S1 "superseded"): the same user's earlier live sessions
 * of the machine that nobody has watched for SUPERSEDE_IDLE_MS, a closed tab or a script that
 * never ended them, so ghost sessions do not pile up on a machine. Attended sessions, other
 * people's, and any with a viewer are left alone.
 */
export async function sessionsToSupersede(db: Queryable, r: { tenantId: string; machineId: string; userId: string; newId: string }): Promise<string[]> {
  const rows = await db.query<{ id: string }>(
    `select id from sessions
      where machine_id = $1 and ended_at is null and tenant_id = $2 and created_by = $3 and id <> $4
        and kind <> 'attended' and viewers = 0 and updated_at < now() - $5::int * interval '1 millisecond'`,
    [r.machineId, r.tenantId, r.userId, r.newId, SUPERSEDE_IDLE_MS]);
  return rows.map((row) => row.id);
}

export async function sessionEvents(db: Queryable, tenantId: string, sessionId: string, after: number, limit: number) {
  const rows = await db.query<{ id: string | number; type: string; actor: string | null; details: unknown; at: Date | string }>(
    "select id, type, actor, details, at from session_events where tenant_id = $1 and session_id = $2 and id > $3 order by id limit $4",
    [tenantId, sessionId, after, limit]);
  return rows.map((r) => ({ id: Number(r.id), type: r.type, actor: r.actor, details: (typeof r.details === "string" ? JSON.parse(r.details) : r.details) as Record<string, unknown>, at: iso(r.at) }));
}
