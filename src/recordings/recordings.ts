import type { Queryable } from "../store/store.ts";
import { iso, isoOrNull } from "../machines/rows.ts";
import { lastEventTime } from "./chunk-codec.ts";

/** Recording rows (S6), the read side: always scoped to the caller's tenant. */

export interface RecordingRow {
  id: string;
  tenant_id: string;
  session_id: string;
  machine_id: string | null;
  channel: number;
  cols: number;
  rows: number;
  started_at: Date;
  ended_at: Date | null;
  bytes: number;
  chunks: number;
}

/** What the API shows of a recording. */
export interface PublicRecording {
  id: string;
  session_id: string;
  machine_id: string | null;
  channel: number;
  cols: number;
  rows: number;
  started_at: string;
  ended_at: string | null;
  bytes: number;
  /** Seconds from start to end; null while it is being recorded (or if the process died before it ended). */
  duration_s: number | null;
}

const COLUMNS = "id::text as id, tenant_id::text as tenant_id, session_id::text as session_id, machine_id::text as machine_id, channel, cols, rows, started_at, ended_at, bytes, chunks";

export function publicRecording(r: RecordingRow): PublicRecording {
  const started = new Date(r.started_at).getTime();
  return {
    id: r.id,
    session_id: r.session_id,
    machine_id: r.machine_id,
    channel: Number(r.channel),
    cols: r.cols,
    rows: r.rows,
    started_at: iso(r.started_at),
    ended_at: isoOrNull(r.ended_at),
    bytes: Number(r.bytes),
    duration_s: r.ended_at === null ? null : Math.max(0, new Date(r.ended_at).getTime() - started) / 1000,
  };
}

export async function getRecording(db: Queryable, tenantId: string, id: string): Promise<RecordingRow | null> {
  const [row] = await db.query<RecordingRow>(`select ${COLUMNS} from recordings where tenant_id = $1 and id = $2`, [tenantId, id]);
  return row ?? null;
}

/** A session's recordings, oldest first; null when the tenant has no such session. */
export async function listSessionRecordings(db: Queryable, tenantId: string, sessionId: string): Promise<RecordingRow[] | null> {
  const [session] = await db.query("select 1 from sessions where tenant_id = $1 and id = $2", [tenantId, sessionId]);
  if (!session) return null;
  return db.query<RecordingRow>(`select ${COLUMNS} from recordings where tenant_id = $1 and session_id = $2 order by started_at, channel, id`, [tenantId, sessionId]);
}

export interface RecordingPage {
  recordings: RecordingRow[];
  next_cursor: string | null;
}

/**
 * A machine's recordings, newest first, `limit` at a time; null when the tenant has no such
 * machine (a removed machine's recordings are still listed). The cursor is opaque: the last
 * row's start time and id.
 */
export async function listMachineRecordings(db: Queryable, tenantId: string, machineId: string, opts: { limit: number; cursor?: string }): Promise<RecordingPage | null> {
  const [machine] = await db.query("select 1 from machines where tenant_id = $1 and id = $2", [tenantId, machineId]);
  if (!machine) return null;
  const after = opts.cursor ? decodeCursor(opts.cursor) : null;
  const params: unknown[] = [tenantId, machineId, opts.limit + 1];
  let where = "tenant_id = $1 and machine_id = $2";
  if (after) {
    params.push(after.at, after.id);
    where += " and (started_at, id) < (timestamptz 'epoch' + $4::bigint * interval '1 millisecond', $5::uuid)";
  }
  const rows = await db.query<RecordingRow>(`select ${COLUMNS} from recordings where ${where} order by started_at desc, id desc limit $3`, params);
  const more = rows.length > opts.limit;
  if (more) rows.pop();
  const last = rows[rows.length - 1];
  return { recordings: rows, next_cursor: more && last ? encodeCursor(new Date(last.started_at).getTime(), last.id) : null };
}

export class CursorError extends Error {}

function encodeCursor(at: number, id: string): string {
  return Buffer.from(`${at}|${id}`).toString("base64url");
}

function decodeCursor(cursor: string): { at: number; id: string } {
  const m = /^(\d{1,16})\|([0-9a-f-]{36})$/.exec(Buffer.from(cursor, "base64url").toString());
  if (!m) throw new CursorError("not a next_cursor of this list");
  return { at: Number(m[1]), id: m[2]! };
}

/**
 * Recordings a previous process was writing when it died (no `ended_at`) are ended at their
 * last event's time. Call once at start, before this process records anything of its own:
 * `ids` names recordings this process already owns (they are left alone), `before` excludes
 * any started since (epoch ms). Returns how many were closed.
 */
export async function closeAbandonedRecordings(db: Queryable, before: number, ids: readonly string[] = []): Promise<number> {
  const open = await db.query<{ id: string; last_ms: number | null; events: string | null }>(
    `select r.id::text as id, c.last_ms, case when c.last_ms is null then c.events end as events
       from recordings r
       left join lateral (select last_ms, events from recording_chunks c where c.recording_id = r.id order by c.seq desc limit 1) c on true
      where r.ended_at is null and r.started_at < timestamptz 'epoch' + $1::bigint * interval '1 millisecond'
        and r.id::text not in (select jsonb_array_elements_text($2::text::jsonb))`,
    [before, JSON.stringify(ids)],
  );
  for (const r of open) {
    // Chunks since schema v8 carry the time of their last output or resize; older ones are read for it.
    const seconds = r.last_ms !== null ? Math.max(0, r.last_ms) / 1000 : r.events ? (lastEventTime(r.events) ?? 0) : 0;
    await db.query("update recordings set ended_at = started_at + $2::float8 * interval '1 second' where id = $1 and ended_at is null", [r.id, seconds]);
  }
  return open.length;
}
