import type { Queryable, Store } from "../store/store.ts";
import { actorsOf, type Candidate, isDataError, isolate, type Outcome, statusOnly } from "./isolate.ts";
import { batchStatement } from "./journal-statement.ts";

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
   * Called synchronously when writes are lost, before any of their promises reject: once per
   * error, with every write it lost (a failed batch and all queued behind it; or, when the
   * database refused some appends for their data, those appends and their actors' later ones).
   */
  onFailure?: (writes: Write[], err: Error) => void;
  /** Called if an append's `done` callback throws (the journal carries on). */
  onCallbackError?: (err: unknown) => void;
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

/**
 * One append: its writes (a slice of its batch's) commit together or not at all. It is what
 * `append` returns, a thenable rather than a promise: most appends are never awaited (the
 * runtime's hot path uses `done`), and a promise each would cost a tenth of the in-memory
 * throughput. A promise is made only when someone subscribes.
 */
class Group implements PromiseLike<void> {
  /** undefined while pending, null once committed, or the error that lost it. */
  private outcome: Error | null | undefined = undefined;
  private waiters: Array<{ resolve: () => void; reject: (err: Error) => void }> | null = null;

  constructor(
    public start: number,
    public end: number,
    readonly done: Durable | undefined,
  ) {}

  then<A = void, B = never>(onCommitted?: ((value: void) => A | PromiseLike<A>) | null, onLost?: ((err: Error) => B | PromiseLike<B>) | null): Promise<A | B> {
    return new Promise<void>((resolve, reject) => {
      if (this.outcome === undefined) (this.waiters ??= []).push({ resolve, reject });
      else if (this.outcome === null) resolve();
      else reject(this.outcome);
    }).then(onCommitted, onLost);
  }

  catch<B = never>(onLost: (err: Error) => B | PromiseLike<B>): Promise<void | B> {
    return this.then(undefined, onLost);
  }

  /** Records the outcome and tells the subscribers (their reactions run as microtasks, after `done`). */
  settle(err: Error | undefined): void {
    this.outcome = err ?? null;
    const waiters = this.waiters;
    this.waiters = null;
    if (waiters) for (const w of waiters) err ? w.reject(err) : w.resolve();
  }
}

/** What `append` returns: awaitable, and settled in the order described there. */
export type Appended = Pick<Group, "then" | "catch">;

interface Batch {
  writes: Write[];
  events: number;
  groups: Group[];
}

/** An append that failed with the batch isolated before it, and why. */
interface Lost {
  group: Group;
  writes: Write[];
  err: Error;
}

/**
 * Group commit. Every `append` joins the open batch; one transaction at a time flushes a batch
 * while the next fills, so throughput grows with concurrency instead of paying a round trip per
 * event. Batches commit in append order, so each actor's promises settle in its sequence order.
 *
 * If the database refuses a batch for its data (a constraint, a value it cannot store), the
 * batch is committed again in halves down to the appends it refuses (isolate.ts), so one
 * actor's bad event fails that actor alone, with its appends still queued. Any other failure
 * (the database gone, the lease lost) fails the batch and every batch still queued: an actor
 * never gets a later sequence number durable after an earlier one was lost.
 */
export class Journal {
  private readonly queue: Batch[] = [];
  private inFlight: Batch | null = null;
  private flushing = false;
  private closed = false;
  /** Settles when the flush loop runs out of batches. */
  private idle: Promise<void> | null = null;
  private wakeIdle: () => void = () => {};
  private readonly maxBatch: number;

  constructor(
    private readonly store: Store,
    private readonly options: JournalOptions = {},
  ) {
    this.maxBatch = options.maxBatch ?? 4_000;
  }

  /**
   * Resolves once `writes` are committed; they are committed together, in one transaction.
   * `done`, if given, is called at that moment too, before the promise's reactions. Callbacks
   * run in append order within a batch, and batches complete in order; when writes are lost,
   * each actor's callbacks still run in its append order.
   */
  append(writes: Write | Write[], done?: Durable): Appended {
    if (this.closed) {
      const refused = new Group(0, 0, undefined);
      refused.settle(new Error("journal is closed"));
      return refused;
    }
    const count = Array.isArray(writes) ? writes.length : 1;
    let batch = this.queue[this.queue.length - 1];
    // A batch in flight is closed; a full one is left to commit alone.
    if (!batch || batch === this.inFlight || batch.writes.length + count > this.maxBatch) {
      batch = { writes: [], events: 0, groups: [] };
      this.queue.push(batch);
    }
    const start = batch.writes.length;
    if (Array.isArray(writes)) for (const w of writes) add(batch, w);
    else add(batch, writes);
    // An outcome per append, not per batch: when the database refuses one append, the others
    // of its batch still succeed.
    const group = new Group(start, batch.writes.length, done);
    batch.groups.push(group);
    if (!this.flushing) {
      this.flushing = true;
      this.idle = new Promise((wake) => (this.wakeIdle = wake));
      // Let the rest of this tick's appends join before the first flush. PGlite runs one
      // statement at a time (on its worker thread), so the first batch waits for the end of
      // the event loop's turn instead: the other sockets' messages of the same turn join it,
      // rather than a batch of one event holding the database while they queue for the next
      // (a burst of agent connects would start with one-event commits).
      if (this.store.flavor === "pglite") setImmediate(() => void this.flush());
      else queueMicrotask(() => void this.flush());
    }
    return group;
  }

  /** Resolves once nothing is queued or committing: everything appended so far, and meanwhile, is settled. */
  async drain(): Promise<void> {
    while (this.idle) await this.idle;
  }

  /** Waits for what is pending, then refuses appends (in the same step, so none slips in between). */
  async close(): Promise<void> {
    while (this.idle) await this.idle;
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
        await this.commit(batch.writes);
      } catch (err) {
        if (isDataError(err)) await this.isolate(batch, err as Error);
        else this.failAll(err as Error);
        continue; // a callback may have appended again
      }
      this.queue.shift();
      if (batch.writes.length > 0) this.options.onCommit?.({ writes: batch.writes.length, events: batch.events, ms: performance.now() - started });
      for (const g of batch.groups) this.settle(g);
    }
    this.inFlight = null;
    this.flushing = false;
    this.idle = null;
    this.wakeIdle();
  }

  /** One statement for `writes`, fenced by the lease (or held open by a test) if asked to. */
  private async commit(writes: Write[]): Promise<void> {
    if (writes.length === 0) return; // a batch emptied by isolation, or an append of nothing
    const { sql, params } = batchStatement(writes);
    const { beforeCommit: hook, fence } = this.options;
    if (!hook && !fence) await this.store.query(sql, params);
    else {
      await this.store.transaction(async (tx) => {
        await fence?.(tx);
        await tx.query(sql, params);
        await hook?.(tx);
      });
    }
  }

  /**
   * The database refused the batch at the head of the queue for its data: finds the appends it
   * refuses, fails them and their actors' appends still queued, and commits the rest.
   */
  private async isolate(batch: Batch, refusal: Error): Promise<void> {
    const candidates: Candidate[] = batch.groups.map((g) => {
      const writes = batch.writes.slice(g.start, g.end);
      return { writes, actors: actorsOf(writes) };
    });
    const outcomes: Outcome[] = [];
    const commit = async (writes: Write[]) => {
      const started = performance.now();
      await this.commit(writes);
      this.options.onCommit?.({ writes: writes.length, events: writes.filter((w) => w.op === "event").length, ms: performance.now() - started });
    };
    let fatal: Error | null = null;
    try {
      await isolate(candidates, refusal, commit, outcomes);
    } catch (err) {
      fatal = err as Error; // the database went away meanwhile, or it refuses nearly everything
    }
    this.queue.shift();
    const lost: Lost[] = [];
    const failedActors = new Map<string, Error>();
    batch.groups.forEach((g, i) => {
      const err = outcomes[i];
      if (!err) return;
      lost.push({ group: g, writes: candidates[i]!.writes, err });
      for (const a of candidates[i]!.actors) if (!failedActors.has(a)) failedActors.set(a, err);
    });
    const refusedHere = lost.length;
    // Undecided appends of this batch are lost with everything queued (failAll, below); otherwise
    // only the failed actors' queued appends are, taken out now, before `onFailure` restarts
    // those actors, so no append of their next life is among them.
    const undecided = batch.groups.filter((_, i) => outcomes[i] === undefined);
    if (!fatal) for (const queued of this.queue) lost.push(...this.takeOut(queued, failedActors));
    this.reportLost(lost);
    batch.groups.forEach((g, i) => {
      const outcome = outcomes[i];
      if (outcome !== undefined) this.settle(g, outcome ?? undefined);
    });
    for (const l of lost.slice(refusedHere)) this.settle(l.group, l.err);
    if (fatal) {
      keepOnly(batch, undecided);
      this.queue.unshift(batch);
      this.failAll(fatal);
    }
  }

  /**
   * Removes from a queued batch the appends of `actors` (they restart from what is durable, so
   * these are lost too), but those that only set a status, which carry no sequence number.
   */
  private takeOut(batch: Batch, actors: Map<string, Error>): Lost[] {
    if (actors.size === 0) return [];
    const lost: Lost[] = [];
    const kept: Group[] = [];
    for (const g of batch.groups) {
      const mine = batch.writes.slice(g.start, g.end);
      const err = statusOnly(mine) ? undefined : actorsOf(mine).map((a) => actors.get(a)).find(Boolean);
      if (err) lost.push({ group: g, writes: mine, err });
      else kept.push(g);
    }
    if (lost.length > 0) keepOnly(batch, kept);
    return lost;
  }

  /** `onFailure` once per error, with every write it lost. */
  private reportLost(lost: Lost[]): void {
    const byError = new Map<Error, Write[]>();
    for (const l of lost) {
      const writes = byError.get(l.err);
      if (writes) writes.push(...l.writes);
      else byError.set(l.err, [...l.writes]);
    }
    for (const [err, writes] of byError) this.options.onFailure?.(writes, err);
  }

  /** Every queued append is lost: `onFailure` sees all their writes, then they fail in order. */
  private failAll(err: Error): void {
    const lost = this.queue.splice(0);
    this.options.onFailure?.(lost.flatMap((b) => b.writes), err);
    for (const b of lost) for (const g of b.groups) this.settle(g, err);
  }

  /** Runs an append's callback and settles its promise; a throwing callback cannot stall the journal. */
  private settle(g: Group, err?: Error): void {
    try {
      g.done?.(err);
    } catch (thrown) {
      this.options.onCallbackError?.(thrown);
    }
    g.settle(err);
  }
}

function add(batch: Batch, w: Write): void {
  batch.writes.push(w);
  if (w.op === "event") batch.events++;
}

/** Rebuilds `batch` with only `groups` (some of its own, in order), their slices moved up. */
function keepOnly(batch: Batch, groups: Group[]): void {
  const old = batch.writes;
  batch.writes = [];
  batch.events = 0;
  batch.groups = groups;
  for (const g of groups) {
    const start = batch.writes.length;
    for (let i = g.start; i < g.end; i++) add(batch, old[i]!);
    g.start = start;
    g.end = batch.writes.length;
  }
}
