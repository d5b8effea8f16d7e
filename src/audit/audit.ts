import { monotonicFactory } from "ulid";

// Monotonic: rows written within one millisecond still sort in the order they were written.
const ulid = monotonicFactory();
import { Batcher } from "../actors/serial.ts";
import { mapStrings } from "../protocol/storable.ts";
import type { Queryable, Store } from "../store/store.ts";

/**
 * The audit log (A7). Every security event, with who did it, to what, from where and when.
 * Callers pass ids, names, fingerprints and dispositions, never secrets or message text;
 * `details` is checked for fields that look like secrets, and values that look like one are
 * redacted, before it is written.
 */
export type ActorType = "user" | "api_token" | "agent" | "anonymous" | "system";

export interface AuditActor {
  type: ActorType;
  id?: string | null;
  name?: string | null;
}

export interface AuditEvent {
  tenantId: string;
  type: string;
  outcome?: "success" | "failure";
  actor: AuditActor;
  target?: { type: string; id: string } | null;
  ip?: string | null;
  correlationId?: string | null;
  details?: Record<string, unknown>;
}

export interface AuditRow {
  id: string;
  at: string;
  type: string;
  outcome: string;
  actor_type: string;
  actor_id: string | null;
  actor_name: string | null;
  target_type: string | null;
  target_id: string | null;
  ip: string | null;
  correlation_id: string | null;
  details: Record<string, unknown>;
}

const SECRET_LOOKING = /(^|_)(password|secret|key|token|code|otp|totp)$/i;
const SECRET_VALUE = /\b(tss|tpat|cak|cek)_[0-9a-f]{16,}/g;

/**
 * The details as JSON, with nothing in them that looks like a secret. A field named like one
 * is a bug (it throws). A value (or a nested key) that looks like one is redacted, not refused:
 * values carry what clients typed (a company named "cak_…"), and refusing them would fail a
 * request after its change was made. Each string is checked as it is, not as JSON text, where
 * an escape such as `\n` would hide the word boundary in front of a key.
 */
function withoutSecrets(details: Record<string, unknown>): string {
  for (const k of Object.keys(details)) {
    if (SECRET_LOOKING.test(k) && !/(_id|_prefix|fingerprint|version|code_hint)$/.test(k)) throw new Error(`audit detail ${k} looks like a secret`);
  }
  return JSON.stringify(mapStrings(details, (s) => s.replace(SECRET_VALUE, "$1_[redacted]")));
}

const INSERT = `insert into audit_events (id, tenant_id, type, outcome, actor_type, actor_id, actor_name, target_type, target_id, ip, correlation_id, details)`;
type AuditParams = [string, string, string, string, string, string | null, string | null, string | null, string | null, string | null, string | null, string];

const insertOne = (db: Queryable, p: AuditParams) => db.query(`${INSERT} values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb)`, p);

/**
 * Group commit for the audit log of one store: the events of a burst (5,000 agents connecting)
 * go in as one multi-row INSERT, one commit, instead of one commit each. `audit()` still
 * resolves only once its row is committed, and rejects if it could not be: a batch that fails
 * is retried row by row, so one bad event fails alone and the others still land.
 */
class AuditWriter {
  /** Answers, per row, null once it is committed or the error that kept it out. */
  readonly batch: Batcher<AuditParams, unknown>;

  constructor(private readonly db: Queryable) {
    this.batch = new Batcher((rows) => this.write(rows), 500);
  }

  private async write(rows: AuditParams[]): Promise<unknown[]> {
    if (rows.length > 1) {
      try {
        await this.db.query(
          `${INSERT}
           select r.id, r.tenant_id, r.type, r.outcome, r.actor_type, r.actor_id, r.actor_name, r.target_type, r.target_id, r.ip, r.correlation_id, r.details
             from jsonb_to_recordset($1::text::jsonb) as r(id text, tenant_id uuid, type text, outcome text, actor_type text, actor_id text, actor_name text,
                                                            target_type text, target_id text, ip text, correlation_id text, details jsonb)`,
          [recordsJson(rows)]);
        return rows.map(() => null);
      } catch {
        // One row the database refuses (say, an unknown tenant) must not take the others with
        // it: the statement wrote nothing, so each row is tried on its own.
      }
    }
    const results: unknown[] = [];
    for (const p of rows) results.push(await insertOne(this.db, p).then(() => null, (err: unknown) => err ?? new Error("audit insert failed")));
    return results;
  }
}

/**
 * The rows as one JSON array, each row's details (JSON text already, from withoutSecrets) put in
 * as they are: not escaped into a string that the database would then parse twice. Sound because
 * each head is a non-empty JSON object (`id` is always set) and each details text one complete
 * JSON object: every string in either was escaped by JSON.stringify.
 */
function recordsJson(rows: AuditParams[]): string {
  const out: string[] = [];
  for (const p of rows) {
    const head = JSON.stringify({
      id: p[0], tenant_id: p[1], type: p[2], outcome: p[3], actor_type: p[4], actor_id: p[5], actor_name: p[6],
      target_type: p[7], target_id: p[8], ip: p[9], correlation_id: p[10],
    });
    out.push(`${head.slice(0, -1)},"details":${p[11]}}`);
  }
  return `[${out.join(",")}]`;
}

const writers = new WeakMap<Queryable, AuditWriter>();
const isStore = (db: Queryable): db is Store => typeof (db as Partial<Store>).transaction === "function";

/**
 * Writes one audit event; resolves once it is committed. On a store (not inside a caller's
 * transaction) events are group-committed with the others of the same moment.
 */
export async function audit(db: Queryable, e: AuditEvent): Promise<void> {
  const details = withoutSecrets(e.details ?? {});
  const params: AuditParams = [ulid(), e.tenantId, e.type, e.outcome ?? "success", e.actor.type, e.actor.id ?? null, e.actor.name ?? null,
    e.target?.type ?? null, e.target?.id ?? null, e.ip ?? null, e.correlationId ?? null, details];
  if (!isStore(db)) return void (await insertOne(db, params));
  let writer = writers.get(db);
  if (!writer) writers.set(db, (writer = new AuditWriter(db)));
  const failed = await writer.batch.add(params);
  if (failed) throw failed;
}

/** Waits until every audit event handed in so far is committed (or has failed): before a store closes. */
export async function flushAudit(db: Queryable): Promise<void> {
  await writers.get(db)?.batch.flush();
}

export interface AuditQuery {
  type?: string;
  actor?: string;
  target?: string;
  outcome?: "success" | "failure";
  from?: Date;
  to?: Date;
  /** The id of the last row of the previous page. */
  cursor?: string;
  limit: number;
}

/** Newest first, cursor-paginated by ULID. */
export async function queryAudit(db: Queryable, tenantId: string, q: AuditQuery): Promise<{ events: AuditRow[]; next_cursor: string | null }> {
  const where = ["tenant_id = $1"];
  const params: unknown[] = [tenantId];
  const add = (sql: string, value: unknown) => {
    params.push(value);
    where.push(sql.replace("?", `$${params.length}`));
  };
  if (q.type) add("type = ?", q.type);
  if (q.actor) add("? in (actor_id, actor_name)", q.actor);
  if (q.target) add("target_id = ?", q.target);
  if (q.outcome) add("outcome = ?", q.outcome);
  if (q.from) add("at >= ?", q.from.toISOString());
  if (q.to) add("at < ?", q.to.toISOString());
  if (q.cursor) add("id < ?", q.cursor);
  params.push(q.limit + 1);
  const rows = await db.query<AuditRow & { at: Date | string }>(
    `select id, at, type, outcome, actor_type, actor_id, actor_name, target_type, target_id, ip, correlation_id, details
       from audit_events where ${where.join(" and ")} order by id desc limit $${params.length}`,
    params,
  );
  const page = rows.slice(0, q.limit).map((r) => ({ ...r, at: new Date(r.at).toISOString() }));
  return { events: page, next_cursor: rows.length > q.limit ? page[page.length - 1]!.id : null };
}
