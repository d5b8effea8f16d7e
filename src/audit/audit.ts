import { monotonicFactory } from "ulid";

// Monotonic: rows written within one millisecond still sort in the order they were written.
const ulid = monotonicFactory();
import type { Queryable } from "../store/store.ts";

/**
 * The audit log (A7). Every security event, with who did it, to what, from where and when.
 * Callers pass ids, names, fingerprints and dispositions, never secrets or message text;
 * `details` is checked for fields that look like secrets before it is written.
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
const SECRET_VALUE = /\b(tss|tpat|cak|cek)_[0-9a-f]{16,}/;

/** Refuses to write anything that looks like a secret: a bug, not a condition to handle. */
function assertNoSecrets(details: Record<string, unknown>): void {
  const text = JSON.stringify(details);
  if (SECRET_VALUE.test(text)) throw new Error("audit details must not contain secret material");
  for (const k of Object.keys(details)) {
    if (SECRET_LOOKING.test(k) && !/(_id|_prefix|fingerprint|version|code_hint)$/.test(k)) throw new Error(`audit detail ${k} looks like a secret`);
  }
}

export async function audit(db: Queryable, e: AuditEvent): Promise<void> {
  const details = e.details ?? {};
  assertNoSecrets(details);
  await db.query(
    `insert into audit_events (id, tenant_id, type, outcome, actor_type, actor_id, actor_name, target_type, target_id, ip, correlation_id, details)
     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb)`,
    [ulid(), e.tenantId, e.type, e.outcome ?? "success", e.actor.type, e.actor.id ?? null, e.actor.name ?? null,
      e.target?.type ?? null, e.target?.id ?? null, e.ip ?? null, e.correlationId ?? null, JSON.stringify(details)],
  );
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
