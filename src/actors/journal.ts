import type { Queryable, Store } from "../store/store.ts";

/**
 * One durable change. A group commit writes a batch of these in one transaction. Event and
 * snapshot writes already have their table's column names, so the hot path builds one object
 * per event and the batch is serialised as it is (jsonb_to_recordset ignores `op`).
 */
export type Write =
  | { op: "event"; kind: string; actor_id: string; seq: number; version: number; at: number; event: unknown }
  | { op: "snapshot"; kind: string; actor_id: string; seq: number; version: number; at: number; state: unknown }
  | { op: "timer.set"; kind: string; actor_id: string; key: string; dueAt: number; event: unknown }
  | { op: "timer.clear"; kind: string; actor_id: string; key: string; dueAt?: number }
  | { op: "status"; kind: string; actor_id: string; status: "active" | "passive" | "failed"; failure?: string; at: number };

/** Called once the writes of an append are committed, or with the error that lost them. */
export type Durable = (err?: Error) => void;

export interface CommitStats {
  writes: number;
  events: number;
  ms: number;
}

export interface JournalOptions {
  /** Upper bound on writes in one transaction. */
  maxBatch?: number;
  /** Called with each committed batch's size and latency (metrics). */
  onCommit?: (stats: CommitStats) => void;
  /**
   * Called synchronously when a commit fails, with every write that is now lost (the failed
   * batch and all queued behind it), before any of their promises reject.
   */
  onFailure?: (writes: Write[], err: Error) => void;
  /**
   * Test hook: when set, each batch's statement runs inside an explicit transaction and this
   * runs after it, before COMMIT (a test can hold or kill the process mid-commit).
   */
  beforeCommit?: (tx: Queryable) => Promise<void>;
  /**
   * Runs first inside each commit's transaction and throws if this process may no longer
   * write (the primary's lease, src/cluster/lease.ts): then nothing of the batch is written.
   */
  fence?: (tx: Queryable) => Promise<void>;
}

interface Batch {
  writes: Write[];
  events: number;
  callbacks: Durable[];
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: Error) => void;
}

/**
 * Group commit. Every `append` joins the open batch; one transaction at a time flushes a batch
 * while the next fills, so throughput grows with concurrency instead of paying a round trip per
 * event. Batches commit in append order, so each actor's promises settle in its sequence order.
 * If a commit fails, every batch still queued fails too: an actor never gets a later sequence
 * number durable after an earlier one was lost.
 */
export class Journal {
  private readonly queue: Batch[] = [];
  private inFlight: Batch | null = null;
  private flushing = false;
  private closed = false;
  private readonly maxBatch: number;

  constructor(
    private readonly store: Store,
    private readonly options: JournalOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 4_000;
  }

  /**
   * Resolves once `writes` are committed; they are committed together, in one transaction.
   * `done`, if given, is called at that moment too, before the promise's reactions: callbacks
   * of one batch run in append order, and batches complete in order.
   */
  append(writes: Write | Write[], done?: Durable): Promise<void> {
    if (this.closed) return Promise.reject(new Error("journal is closed"));
    const count = Array.isArray(writes) ? writes.length : 1;
    let batch = this.queue[this.queue.length - 1];
    // A batch in flight is closed; a full one is left to commit alone.
    if (!batch || batch === this.inFlight || batch.writes.length + count > this.maxBatch) {
      batch = newBatch();
      this.queue.push(batch);
    }
    if (Array.isArray(writes)) for (const w of writes) this.add(batch, w);
    else this.add(batch, writes);
    if (done) batch.callbacks.push(done);
    if (!this.flushing) {
      this.flushing = true;
      // Let the rest of this tick's appends join before the first flush. PGlite runs one
      // statement at a time (on its worker thread), so the first batch waits for the end of
      // the event loop's turn instead: the other sockets' messages of the same turn join it,
      // rather than a batch of one event holding the database while they queue for the next
      // (a burst of agent connects would start with one-event commits).
      if (this.store.flavor === "pglite") setImmediate(() => void this.flush());
      else queueMicrotask(() => void this.flush());
    }
    return batch.promise;
  }

  private add(batch: Batch, w: Write): void {
    batch.writes.push(w);
    if (w.op === "event") batch.events++;
  }

  /** Resolves when everything appended so far is committed (or has failed). */
  async drain(): Promise<void> {
    const last = this.queue[this.queue.length - 1];
    if (last) await last.promise.catch(() => {});
  }

  async close(): Promise<void> {
    await this.drain();
    this.closed = true;
  }

  get pending(): number {
    return this.queue.reduce((n, b) => n + b.events, 0);
  }

  private async flush(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue[0]!;
      this.inFlight = batch;
      const started = performance.now();
      try {
        const { sql, params } = batchStatement(batch.writes);
        const { beforeCommit: hook, fence } = this.options;
        if (!hook && !fence) await this.store.query(sql, params);
        else {
          // Fenced (a lease), or a test holding the transaction open before COMMIT.
          await this.store.transaction(async (tx) => {
            await fence?.(tx);
            await tx.query(sql, params);
            await hook?.(tx);
          });
        }
      } catch (err) {
        const failed = this.queue.splice(0);
        this.options.onFailure?.(failed.flatMap((b) => b.writes), err as Error);
        for (const b of failed) {
          for (const cb of b.callbacks) cb(err as Error);
          b.reject(err as Error);
        }
        break;
      }
      this.queue.shift();
      this.options.onCommit?.({ writes: batch.writes.length, events: batch.events, ms: performance.now() - started });
      for (const cb of batch.callbacks) cb();
      batch.resolve();
    }
    this.inFlight = null;
    this.flushing = false;
  }
}

function newBatch(): Batch {
  let resolve!: () => void;
  let reject!: (err: Error) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // a batch nobody awaits must not become an unhandled rejection
  return { writes: [], events: 0, callbacks: [], promise, resolve, reject };
}

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

/** The batch as one statement and its parameters. Timers and statuses: last write per key wins. */
function batchStatement(writes: Write[]): { sql: string; params: string[] } {
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
      case "timer.clear":
        timers.set(`${w.kind}/${w.actor_id}\u0000${w.key}`, w);
        break;
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
