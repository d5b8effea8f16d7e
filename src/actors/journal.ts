import type { Queryable, Store } from "../store/store.ts";

/** One durable change. A group commit writes a batch of these in one transaction. */
export type Write =
  | { op: "event"; kind: string; id: string; seq: number; version: number; at: number; event: unknown }
  | { op: "snapshot"; kind: string; id: string; seq: number; version: number; at: number; state: unknown }
  | { op: "timer.set"; kind: string; id: string; key: string; dueAt: number; event: unknown }
  | { op: "timer.clear"; kind: string; id: string; key: string; dueAt?: number }
  | { op: "status"; kind: string; id: string; status: "active" | "passive" | "failed"; failure?: string; at: number };

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
  /** Test hook: runs inside the transaction after the writes, before COMMIT. */
  beforeCommit?: (tx: Queryable) => Promise<void>;
}

interface Batch {
  writes: Write[];
  events: number;
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

  /** Resolves once `writes` are committed; they are committed together, in one transaction. */
  append(writes: Write[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error("journal is closed"));
    let batch = this.queue[this.queue.length - 1];
    // A batch in flight is closed; a full one is left to commit alone.
    if (!batch || batch === this.inFlight || batch.writes.length + writes.length > this.maxBatch) {
      batch = newBatch();
      this.queue.push(batch);
    }
    for (const w of writes) {
      batch.writes.push(w);
      if (w.op === "event") batch.events++;
    }
    if (!this.flushing) {
      this.flushing = true;
      // Let the rest of this tick's appends join before the first flush.
      queueMicrotask(() => void this.flush());
    }
    return batch.promise;
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
        await this.store.transaction(async (tx) => {
          await writeBatch(tx, batch.writes);
          if (this.options.beforeCommit) await this.options.beforeCommit(tx);
        });
      } catch (err) {
        const failed = this.queue.splice(0);
        this.options.onFailure?.(failed.flatMap((b) => b.writes), err as Error);
        for (const b of failed) b.reject(err as Error);
        break;
      }
      this.queue.shift();
      this.options.onCommit?.({ writes: batch.writes.length, events: batch.events, ms: performance.now() - started });
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
  return { writes: [], events: 0, promise, resolve, reject };
}

// Each statement takes its whole batch as one JSON parameter: one round trip per table, and
// the same SQL on PGlite and postgres.js. `::text::jsonb` keeps drivers from re-encoding it.
const INSERT_EVENTS = `insert into actor_journal (kind, actor_id, seq, version, at, event)
  select kind, actor_id, seq, version, at, event
  from jsonb_to_recordset($1::text::jsonb) as x(kind text, actor_id text, seq bigint, version int, at bigint, event jsonb)`;
const INSERT_SNAPSHOTS = `insert into actor_snapshots (kind, actor_id, seq, version, at, state)
  select kind, actor_id, seq, version, at, state
  from jsonb_to_recordset($1::text::jsonb) as x(kind text, actor_id text, seq bigint, version int, at bigint, state jsonb)
  on conflict (kind, actor_id, seq) do nothing`;
const UPSERT_TIMERS = `insert into actor_timers (kind, actor_id, key, due_at, event)
  select kind, actor_id, key, due_at, event
  from jsonb_to_recordset($1::text::jsonb) as x(kind text, actor_id text, key text, due_at bigint, event jsonb)
  on conflict (kind, actor_id, key) do update set due_at = excluded.due_at, event = excluded.event`;
// A fired timer clears only the deadline it fired for, not one set again since.
const DELETE_TIMERS = `delete from actor_timers t
  using jsonb_to_recordset($1::text::jsonb) as x(kind text, actor_id text, key text, due_at bigint)
  where t.kind = x.kind and t.actor_id = x.actor_id and t.key = x.key and (x.due_at is null or t.due_at = x.due_at)`;
const UPSERT_STATUS = `insert into actors (kind, actor_id, status, failure, updated_at)
  select kind, actor_id, status, failure, at
  from jsonb_to_recordset($1::text::jsonb) as x(kind text, actor_id text, status text, failure text, at bigint)
  on conflict (kind, actor_id) do update set status = excluded.status, failure = excluded.failure, updated_at = excluded.updated_at`;

async function writeBatch(tx: Queryable, writes: Write[]): Promise<void> {
  const events: object[] = [];
  const snapshots: object[] = [];
  // Timers and statuses: the last write per key wins within a batch.
  const timers = new Map<string, Write & { op: "timer.set" | "timer.clear" }>();
  const statuses = new Map<string, Write & { op: "status" }>();
  for (const w of writes) {
    switch (w.op) {
      case "event":
        events.push({ kind: w.kind, actor_id: w.id, seq: w.seq, version: w.version, at: w.at, event: w.event });
        break;
      case "snapshot":
        snapshots.push({ kind: w.kind, actor_id: w.id, seq: w.seq, version: w.version, at: w.at, state: w.state });
        break;
      case "timer.set":
      case "timer.clear":
        timers.set(`${w.kind}/${w.id}\u0000${w.key}`, w);
        break;
      case "status":
        statuses.set(`${w.kind}/${w.id}`, w);
        break;
    }
  }
  const sets: object[] = [];
  const clears: object[] = [];
  for (const t of timers.values()) {
    if (t.op === "timer.set") sets.push({ kind: t.kind, actor_id: t.id, key: t.key, due_at: t.dueAt, event: t.event });
    else clears.push({ kind: t.kind, actor_id: t.id, key: t.key, due_at: t.dueAt ?? null });
  }
  const rows = [...statuses.values()].map((s) => ({ kind: s.kind, actor_id: s.id, status: s.status, failure: s.failure ?? null, at: s.at }));
  if (events.length) await tx.query(INSERT_EVENTS, [JSON.stringify(events)]);
  if (snapshots.length) await tx.query(INSERT_SNAPSHOTS, [JSON.stringify(snapshots)]);
  if (clears.length) await tx.query(DELETE_TIMERS, [JSON.stringify(clears)]);
  if (sets.length) await tx.query(UPSERT_TIMERS, [JSON.stringify(sets)]);
  if (rows.length) await tx.query(UPSERT_STATUS, [JSON.stringify(rows)]);
}
