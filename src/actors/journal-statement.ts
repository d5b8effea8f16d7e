import type { Write } from "./journal.ts";

// A whole batch is ONE statement: each table's rows arrive as one JSON parameter, and when
// a batch touches several tables their writes are data-modifying CTEs of that one statement.
// A statement is atomic on its own, so a group commit costs one round trip (no BEGIN and
// COMMIT). Only the parts a batch needs are included: the usual batch is a plain INSERT, which
// matters on PGlite, where every statement is parsed and planned afresh. The same SQL runs on
// PGlite and postgres.js; `::text::jsonb` keeps the drivers from re-encoding the parameters.
const PARTS: Array<(param: string) => string> = [
  (p) => `insert into actor_journal (kind, actor_id, seq, version, at, event)
    select kind, actor_id, seq, version, at, event
      from jsonb_to_recordset(${p}::text::jsonb) as x(kind text, actor_id text, seq bigint, version int, at bigint, event jsonb)`,
  (p) => `insert into actor_snapshots (kind, actor_id, seq, version, at, state)
    select kind, actor_id, seq, version, at, state
      from jsonb_to_recordset(${p}::text::jsonb) as x(kind text, actor_id text, seq bigint, version int, at bigint, state jsonb)
    on conflict (kind, actor_id, seq) do nothing`,
  // A fired timer clears only the deadline it fired for, not one set again since.
  (p) => `delete from actor_timers t
     using jsonb_to_recordset(${p}::text::jsonb) as x(kind text, actor_id text, key text, due_at bigint)
     where t.kind = x.kind and t.actor_id = x.actor_id and t.key = x.key and (x.due_at is null or t.due_at = x.due_at)`,
  (p) => `insert into actor_timers (kind, actor_id, key, due_at, event)
    select kind, actor_id, key, due_at, event
      from jsonb_to_recordset(${p}::text::jsonb) as x(kind text, actor_id text, key text, due_at bigint, event jsonb)
    on conflict (kind, actor_id, key) do update set due_at = excluded.due_at, event = excluded.event`,
  (p) => `insert into actors (kind, actor_id, status, failure, updated_at)
    select kind, actor_id, status, failure, at
      from jsonb_to_recordset(${p}::text::jsonb) as x(kind text, actor_id text, status text, failure text, at bigint)
    on conflict (kind, actor_id) do update set status = excluded.status, failure = excluded.failure, updated_at = excluded.updated_at`,
];

// The statement for each combination of parts (a bit mask over PARTS), built once.
const statements = new Map<number, string>();
function statementFor(mask: number): string {
  let sql = statements.get(mask);
  if (sql) return sql;
  const used = PARTS.filter((_, i) => mask & (1 << i));
  sql = used.length === 1
    ? used[0]!("$1")
    : `with ${used.map((part, i) => `w${i} as (${part(`$${i + 1}`)} returning 1)`).join(",\n")} select 1`;
  statements.set(mask, sql);
  return sql;
}

/** The batch as one statement and its parameters. Timers and statuses: last write per key wins (see timer.clear). */
export function batchStatement(writes: Write[]): { sql: string; params: string[] } {
  const events: Write[] = [];
  const snapshots: Write[] = [];
  const timers = new Map<string, Write & { op: "timer.set" | "timer.clear" }>();
  const statuses = new Map<string, Write & { op: "status" }>();
  for (const w of writes) {
    switch (w.op) {
      case "event":
        events.push(w);
        break;
      case "snapshot":
        snapshots.push(w);
        break;
      case "timer.set":
      case "timer.clear": {
        const key = `${w.kind}/${w.actor_id}\u0000${w.key}`;
        const prev = timers.get(key);
        // A firing of the deadline set in this same batch: that set never reaches the table, so
        // `due_at = X` would match nothing and leave the older committed deadline to fire again.
        // The key has no deadline left: clear it whatever is stored.
        if (w.op === "timer.clear" && w.dueAt !== undefined && prev?.op === "timer.set" && prev.dueAt === w.dueAt) {
          timers.set(key, { op: "timer.clear", kind: w.kind, actor_id: w.actor_id, key: w.key });
        } else timers.set(key, w);
        break;
      }
      case "status":
        statuses.set(`${w.kind}/${w.actor_id}`, w);
        break;
    }
  }
  const sets: object[] = [];
  const clears: object[] = [];
  for (const t of timers.values()) {
    if (t.op === "timer.set") sets.push({ kind: t.kind, actor_id: t.actor_id, key: t.key, due_at: t.dueAt, event: t.event });
    else clears.push({ kind: t.kind, actor_id: t.actor_id, key: t.key, due_at: t.dueAt ?? null });
  }
  const rows = [...statuses.values()].map((s) => ({ kind: s.kind, actor_id: s.actor_id, status: s.status, failure: s.failure ?? null, at: s.at }));
  let mask = 0;
  const params: string[] = [];
  [events, snapshots, clears, sets, rows].forEach((part, i) => {
    if (part.length === 0) return;
    mask |= 1 << i;
    params.push(JSON.stringify(part));
  });
  return { sql: statementFor(mask), params };
}
