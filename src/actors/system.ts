import type { Store } from "../store/store.ts";
import { silentLogger, type Logger } from "../log.ts";
import type { AnyMachineSnapshot } from "xstate";
import { Cell, type Envelope, type Reply } from "./cell.ts";
import {
  ActorError, ActorFailedError, AskTimeoutError, EventRejectedError, isStoreOutage, MailboxFullError, NotDurableError,
  PermanentActorError, SystemStoppedError, UnknownKindError,
} from "./errors.ts";
import { Journal, type CommitStats, type JournalOptions, type Write } from "./journal.ts";
import { Kind } from "./kind.ts";
import { loadActiveActors, loadActors, loadFailedActors, loadTimers, type StoredActor } from "./repository.ts";
import { Batcher } from "./serial.ts";
import { Deadlines } from "./deadlines.ts";
import { onFailure } from "./supervisor.ts";
import { TimerService, type Timer } from "./timers.ts";
import { parseAddress, type ActorEvent, type Address, type AskResult, type Effect, type KindDefinition } from "./types.ts";

const TIMER_RETRY_MS = 50;

export interface SystemOptions {
  store: Store;
  logger?: Logger;
  /** How often idle actors are looked for. Defaults to a quarter of the shortest idle time. */
  sweepMs?: number;
  /** Default `ask` timeout. */
  askTimeoutMs?: number;
  /** Group commit bound on writes per transaction. */
  maxBatch?: number;
  onCommit?: (stats: CommitStats) => void;
  /** Test hook passed to the journal: runs inside each commit's transaction, before COMMIT. */
  beforeCommit?: JournalOptions["beforeCommit"];
  /** Checked inside every journal commit: the primary's lease (src/cluster/lease.ts). */
  fence?: JournalOptions["fence"];
  clock?: () => number;
  /** Reload delay after a store outage failed an actor's load or commit: doubles from base up to max. */
  outageRetryBaseMs?: number;
  outageRetryMaxMs?: number;
}

export interface FailedActor {
  address: Address;
  failure: string;
}

/**
 * Hosts actors addressed by `kind/id`. Each has an ordered, bounded mailbox; an event is
 * stepped through the pure logic at once, journaled by group commit, and its effects (reply,
 * sends, timers, the kind's own) run only after the commit: the output gate.
 */
export class ActorSystem {
  readonly store: Store;
  readonly log: Logger;
  private readonly kinds = new Map<string, Kind>();
  private readonly cells = new Map<Address, Cell>();
  private readonly journal: Journal;
  private readonly timers: TimerService;
  private readonly clock: () => number;
  private readonly askTimeoutMs: number;
  private readonly outageBaseMs: number;
  private readonly outageMaxMs: number;
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private readonly deadlines = new Deadlines();
  /** Actors coming into memory in the same tick are read together (a wave of agents connecting). */
  private readonly loads = new Batcher<{ kind: string; id: string }, StoredActor>(async (items) => {
    const byKind = new Map<string, string[]>();
    for (const { kind, id } of items) {
      const ids = byKind.get(kind);
      if (ids) ids.push(id);
      else byKind.set(kind, [id]);
    }
    const loaded = new Map<string, StoredActor>();
    for (const [kind, ids] of byKind) for (const a of await loadActors(this.store, kind, ids)) loaded.set(`${kind}/${a.id}`, a);
    return items.map(({ kind, id }) => loaded.get(`${kind}/${id}`)!);
  }, 1_000);
  private stopping = false;
  private started = false;
  /** Commit figures since start, for metrics. */
  readonly commits = { batches: 0, events: 0, lastMs: 0 };

  constructor(private readonly options: SystemOptions) {
    this.store = options.store;
    this.log = options.logger ?? silentLogger;
    this.clock = options.clock ?? Date.now;
    this.askTimeoutMs = options.askTimeoutMs ?? 5_000;
    this.outageBaseMs = options.outageRetryBaseMs ?? 100;
    this.outageMaxMs = options.outageRetryMaxMs ?? 5_000;
    this.journal = new Journal(options.store, {
      maxBatch: options.maxBatch,
      beforeCommit: options.beforeCommit,
      fence: options.fence,
      onCommit: (stats) => {
        this.commits.batches++;
        this.commits.events += stats.events;
        this.commits.lastMs = stats.ms;
        options.onCommit?.(stats);
      },
      onFailure: (writes, err) => this.onCommitFailure(writes, err),
      onCallbackError: (err) => this.log.error({ err: (err as Error)?.message }, "a commit's callback threw"),
    });
    this.timers = new TimerService((t) => this.fireTimer(t), this.clock);
  }

  register(def: KindDefinition): this {
    if (this.kinds.has(def.kind)) throw new Error(`kind ${def.kind} is already registered`);
    this.kinds.set(def.kind, new Kind(def));
    return this;
  }

  /**
   * Recovery: actors that were resident with un-snapshotted events come back into memory,
   * failed ones are listed again, and every durable timer is re-armed at its deadline (the
   * overdue fire at once, oldest first).
   */
  async start(): Promise<{ recovered: number; timers: number; failed: number }> {
    for (const f of await loadFailedActors(this.store)) {
      const cell = this.cellFor(f.address, false);
      if (cell) this.markFailed(cell, f.failure, false);
    }
    let recovered = 0;
    for (const stored of await loadActiveActors(this.store)) {
      const address = `${stored.kind}/${stored.id}` as Address;
      const cell = this.cellFor(address, false);
      if (!cell) {
        this.log.warn({ address }, "journal holds an actor of an unregistered kind; left as it is");
        continue;
      }
      this.hydrate(cell, stored);
      recovered++;
    }
    const timers = await loadTimers(this.store);
    for (const t of timers) this.timers.set(t);
    const shortestIdle = Math.min(60_000, ...[...this.kinds.values()].map((k) => k.options.idleMs));
    const sweepMs = this.options.sweepMs ?? Math.max(50, shortestIdle / 4);
    this.sweeper = setInterval(() => this.sweep(), sweepMs);
    this.sweeper.unref?.();
    this.started = true;
    return { recovered, timers: timers.length, failed: this.failedActors().length };
  }

  get ready(): boolean {
    return this.started && !this.stopping;
  }

  /** Fire-and-forget. Throws at once if the mailbox is full or the actor is failed. */
  send(address: Address | string, event: ActorEvent): void {
    this.enqueue(address, { event });
  }

  /** Sends and waits until the event is durable and processed; resolves with its reply. */
  ask<TReply = unknown>(address: Address | string, event: ActorEvent, timeoutMs = this.askTimeoutMs): Promise<AskResult<TReply>> {
    return this.withReply(address, timeoutMs, (reply) => ({ event, reply })) as Promise<AskResult<TReply>>;
  }

  /** The actor's state once everything sent to it before is processed and durable. */
  inspect(address: Address | string, timeoutMs = this.askTimeoutMs): Promise<AskResult<never>> {
    return this.withReply(address, timeoutMs, (reply) => ({ event: null, reply })) as Promise<AskResult<never>>;
  }

  /** Keeps an actor resident (e.g. while it owns a live connection). Counted: unpin as often. */
  pin(address: Address | string): void {
    const cell = this.cellFor(address as Address, true)!;
    cell.pins++;
  }

  unpin(address: Address | string): void {
    const cell = this.cells.get(address as Address);
    if (cell && cell.pins > 0) cell.pins--;
  }

  isResident(address: Address | string): boolean {
    const cell = this.cells.get(address as Address);
    return !!cell && cell.status !== "failed";
  }

  failedActors(): FailedActor[] {
    const out: FailedActor[] = [];
    for (const cell of this.cells.values()) if (cell.status === "failed") out.push({ address: cell.address, failure: cell.failure ?? "failed" });
    return out;
  }

  /**
   * Clears a failed actor so the next message loads it afresh from its durable state. False if
   * it was not failed (or is being revived already); throws if its new status cannot be stored.
   */
  async revive(address: Address | string): Promise<boolean> {
    const cell = this.cells.get(address as Address);
    if (!cell || cell.status !== "failed" || cell.reviving) return false;
    cell.reviving = true;
    try {
      // The failed cell stays (refusing messages) until 'passive' is durable: gone sooner, a
      // message would load a new cell that still reads 'failed' and is failed again.
      await this.journal.append([{ op: "status", kind: cell.kind.name, actor_id: cell.id, status: "passive", at: this.clock() }]);
    } finally {
      cell.reviving = false;
    }
    if (this.cells.get(cell.address) === cell) this.cells.delete(cell.address);
    // Timers that came due while it was failed were not delivered: arm them again (overdue ones fire now).
    this.timers.resetActor(cell.address, await loadTimers(this.store, cell.address));
    this.log.info({ address }, "failed actor revived");
    return true;
  }

  /** Figures for /metrics, computed on demand. */
  stats(): { kinds: Map<string, { resident: number; failed: number; depth: number; maxDepth: number; events: number; restarts: number; effectErrors: number }>; timers: number; journalPending: number } {
    const kinds = new Map<string, { resident: number; failed: number; depth: number; maxDepth: number; events: number; restarts: number; effectErrors: number }>();
    for (const k of this.kinds.values()) kinds.set(k.name, { resident: 0, failed: 0, depth: 0, maxDepth: 0, events: k.events, restarts: k.restarts, effectErrors: k.effectErrors });
    for (const cell of this.cells.values()) {
      const s = kinds.get(cell.kind.name)!;
      if (cell.status === "failed") s.failed++;
      else s.resident++;
      s.depth += cell.depth;
      s.maxDepth = Math.max(s.maxDepth, cell.depth);
    }
    return { kinds, timers: this.timers.size, journalPending: this.journal.pending };
  }

  /**
   * Graceful stop: refuse new work, let mailboxes drain, snapshot every resident actor as
   * passive (so the next start has nothing to replay), flush the journal.
   */
  async stop(drainTimeoutMs = 10_000): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.timers.stop();
    this.deadlines.stop();
    const deadline = Date.now() + drainTimeoutMs;
    while (Date.now() < deadline && [...this.cells.values()].some((c) => (c.status === "running" || c.status === "loading") && c.depth > 0)) {
      await Bun.sleep(5);
    }
    for (const cell of this.cells.values()) {
      if (cell.status === "running" && cell.depth === 0) this.passivate(cell, false);
      for (const env of cell.queue.splice(0)) env.reply?.reject(new SystemStoppedError());
    }
    await this.journal.close();
  }

  // ---- mailbox ------------------------------------------------------------------------------

  private withReply(address: string, timeoutMs: number, make: (reply: Reply) => Envelope): Promise<AskResult> {
    return new Promise<AskResult>((resolve, reject) => {
      const deadline = this.deadlines.add(timeoutMs, () => reject(new AskTimeoutError(address, timeoutMs)));
      const reply: Reply = {
        resolve: (r) => (deadline.settle(), resolve(r)),
        reject: (e) => (deadline.settle(), reject(e)),
      };
      try {
        this.enqueue(address, make(reply));
      } catch (err) {
        reply.reject(err as Error);
      }
    });
  }

  private enqueue(address: string, env: Envelope): void {
    if (this.stopping) throw new SystemStoppedError();
    const cell = this.cellFor(address as Address, true)!;
    if (cell.status === "failed") throw new ActorFailedError(cell.address, cell.failure ?? "failed");
    if (cell.depth >= cell.kind.options.mailboxLimit) throw new MailboxFullError(cell.address, cell.kind.options.mailboxLimit);
    cell.queue.push(env);
    this.drain(cell);
  }

  /** The resident cell for an address; a new one starts loading if `create` is set. */
  private cellFor(address: Address, create: boolean): Cell | undefined {
    const existing = this.cells.get(address);
    if (existing) return existing;
    const { kind } = parseAddress(address);
    if (!this.kinds.has(kind)) {
      if (create) throw new UnknownKindError(kind);
      return undefined;
    }
    const cell = this.newCell(address);
    if (create) void this.load(cell, false);
    return cell;
  }

  private newCell(address: Address): Cell {
    const { kind, id } = parseAddress(address);
    const cell = new Cell(address, id, this.kinds.get(kind)!);
    cell.lastActive = this.clock();
    this.cells.set(address, cell);
    return cell;
  }

  private async load(cell: Cell, afterFailure: boolean): Promise<void> {
    const generation = cell.generation;
    try {
      await cell.durable.catch(() => {});
      const stored = await this.loads.add({ kind: cell.kind.name, id: cell.id });
      // After a failed commit, timers registered by events that never became durable go too.
      const timers = afterFailure ? await loadTimers(this.store, cell.address) : null;
      if (cell.generation !== generation || cell.status === "failed") return;
      if (stored.status === "failed") return this.markFailed(cell, stored.failure ?? "failed", false);
      if (timers) this.timers.resetActor(cell.address, timers);
      this.hydrate(cell, stored);
    } catch (err) {
      if (cell.generation !== generation) return;
      if (isStoreOutage(err)) this.retryAfterOutage(cell, err as Error);
      else this.onActorFailure(cell, err as Error);
    }
  }

  private hydrate(cell: Cell, stored: StoredActor): void {
    try {
      const h = cell.kind.hydrate(stored, cell.address);
      // Loaded from durable state, with nothing in flight: reads no longer wait on (or fail
      // with) a commit of the previous incarnation.
      cell.durable = Promise.resolve();
      cell.snapshot = h.snapshot;
      cell.seq = h.seq;
      cell.snapSeq = h.snapSeq;
      cell.initialEffects = h.initialEffects;
      cell.markedActive = stored.status === "active";
      cell.status = "running";
      this.drain(cell);
    } catch (err) {
      this.onActorFailure(cell, err as Error);
    }
  }

  private drain(cell: Cell): void {
    if (cell.status !== "running" || cell.draining) return;
    cell.draining = true;
    try {
      while (cell.queue.length > 0 && cell.status === "running") this.process(cell, cell.queue.shift()!);
    } finally {
      cell.draining = false;
    }
  }

  // ---- one event ----------------------------------------------------------------------------

  private process(cell: Cell, env: Envelope): void {
    const kind = cell.kind;
    if (env.event === null) return this.answerAfterDurable(cell, env.reply);
    if (env.timer && !this.timers.consume(cell.address, env.timer.key, env.timer.dueAt)) {
      return this.answerAfterDurable(cell, env.reply); // the timer was set again or cancelled since it fired
    }
    const at = this.clock();
    const event = { ...env.event, at };
    let step;
    try {
      step = kind.stepper.step(cell.snapshot, event);
    } catch (err) {
      return this.onActorFailure(cell, err as Error, env);
    }
    let effects = step.effects; // shared and frozen when empty: never push onto it
    if (cell.initialEffects) {
      effects = [...cell.initialEffects, ...effects];
      cell.initialEffects = null;
    }
    cell.lastActive = at;
    // An event that enables no transition changes nothing: nothing to journal.
    if (!step.changed && effects.length === 0 && !env.timer) return this.answerAfterDurable(cell, env.reply);

    cell.snapshot = step.snapshot;
    const seq = ++cell.seq;
    const name = kind.name;
    const id = cell.id;
    const eventWrite: Write = { op: "event", kind: name, actor_id: id, seq, version: kind.version, at, event };
    // Most events write only their journal row; the rest ride in the same transaction.
    let writes: Write[] | null = null;
    const also = (w: Write) => (writes ??= [eventWrite]).push(w);
    if (!cell.markedActive) {
      also({ op: "status", kind: name, actor_id: id, status: "active", at });
      cell.markedActive = true;
    }
    if (env.timer) also({ op: "timer.clear", kind: name, actor_id: id, key: env.timer.key, dueAt: env.timer.dueAt });
    for (const e of effects) {
      if (e.type === "timer.set") {
        const t = e as Extract<Effect, { type: "timer.set" }>;
        also({ op: "timer.set", kind: name, actor_id: id, key: t.key, dueAt: t.at, event: t.event });
        // Registered now so a stale firing already queued is recognised; it cannot become
        // visible before this event is durable, because its own effects wait for a later commit.
        this.timers.set({ address: cell.address, key: t.key, dueAt: t.at, event: t.event });
      } else if (e.type === "timer.cancel") {
        const key = (e as Extract<Effect, { type: "timer.cancel" }>).key;
        also({ op: "timer.clear", kind: name, actor_id: id, key });
        this.timers.cancel(cell.address, key);
      }
    }
    if (seq - cell.snapSeq >= kind.options.snapshotEvery) {
      also({ op: "snapshot", kind: name, actor_id: id, seq, version: kind.version, at, state: kind.stepper.persist(step.snapshot) });
      cell.snapSeq = seq;
    }
    kind.events++;
    cell.inflight++;
    const snapshot = step.snapshot;
    // The output gate: effects (the reply among them) wait for this event's commit. A durable
    // event keeps its effects even if a later event made the actor restart meanwhile.
    cell.durable = this.journal.append(writes ?? eventWrite, (err) => {
      cell.inflight--;
      if (err) return env.reply?.reject(new NotDurableError(cell.address, err.message));
      if (cell.outages > 0) cell.outages = 0; // the store is back: the next outage backs off from the start
      if (effects.length > 0 || env.reply) this.runEffects(cell, effects, env.reply, snapshot, seq);
    });
  }

  /** Answers a read or an event that changed nothing, once everything before it is durable. */
  private answerAfterDurable(cell: Cell, reply: Reply | undefined): void {
    if (!reply) return;
    const view = cell.view();
    cell.durable.then(
      () => reply.resolve({ reply: undefined, ...view }),
      (err: Error) => reply.reject(new NotDurableError(cell.address, err.message)),
    );
  }

  private runEffects(cell: Cell, effects: Effect[], reply: Reply | undefined, snapshot: AnyMachineSnapshot, seq: number): void {
    const view = { value: snapshot.value, context: snapshot.context, seq };
    let replied = false;
    for (const effect of effects) {
      switch (effect.type) {
        case "reply":
          if (reply && !replied) reply.resolve({ reply: (effect as { data?: unknown }).data, ...view });
          replied = true;
          break;
        case "send": {
          const { to, event } = effect as Extract<Effect, { type: "send" }>;
          try {
            this.send(to, event);
          } catch (err) {
            this.log.warn({ from: cell.address, to, err: (err as Error).message }, "send effect not delivered");
          }
          break;
        }
        case "timer.set":
        case "timer.cancel":
          break; // handled when the event was accepted
        default:
          this.runKindEffect(cell, effect, view);
      }
    }
    if (reply && !replied) reply.resolve({ reply: undefined, ...view });
  }

  private runKindEffect(cell: Cell, effect: Effect, view: Omit<AskResult, "reply">): void {
    const handler = cell.kind.def.effects?.[effect.type];
    const fail = (err: unknown) => {
      cell.kind.effectErrors++;
      this.log.error({ address: cell.address, effect: effect.type, err: (err as Error)?.message }, "effect failed");
    };
    if (!handler) return fail(new Error("no handler for this effect type"));
    try {
      const r = handler(effect, { address: cell.address, id: cell.id, value: view.value, context: view.context });
      if (r instanceof Promise) r.catch(fail);
    } catch (err) {
      fail(err);
    }
  }

  // ---- timers -------------------------------------------------------------------------------

  private fireTimer(t: Timer): void {
    if (this.stopping) return;
    try {
      this.enqueue(t.address, { event: t.event, timer: { key: t.key, dueAt: t.dueAt } });
    } catch (err) {
      if (err instanceof MailboxFullError) {
        this.timers.retry(t, TIMER_RETRY_MS); // durable and still due: try again when there is room
        return;
      }
      // A failed actor: the timer stays in storage and is armed again if the actor is revived.
      this.log.warn({ address: t.address, timer: t.key, err: (err as Error).message }, "timer not delivered");
    }
  }

  // ---- supervision --------------------------------------------------------------------------

  private onActorFailure(cell: Cell, err: Error, env?: Envelope): void {
    const message = err?.message ?? String(err);
    if (err instanceof PermanentActorError) {
      env?.reply?.reject(new ActorFailedError(cell.address, message));
      return this.markFailed(cell, message, true);
    }
    env?.reply?.reject(new EventRejectedError(cell.address, message));
    this.restart(cell, message);
  }

  private restart(cell: Cell, reason: string): void {
    cell.generation++;
    const verdict = onFailure(cell.failures, Date.now(), cell.kind.options);
    cell.failures = verdict.recent;
    if (verdict.action === "stop") {
      return this.markFailed(cell, `${verdict.recent.length} failures within ${cell.kind.options.failureWindowMs} ms; last: ${reason}`, true);
    }
    cell.kind.restarts++;
    cell.status = "restarting";
    this.log.warn({ address: cell.address, reason, retryInMs: verdict.delayMs }, "actor failed; restarting from its durable state");
    const generation = cell.generation;
    setTimeout(() => {
      if (cell.generation !== generation || cell.status !== "restarting" || this.stopping) return;
      cell.status = "loading";
      void this.load(cell, true);
    }, verdict.delayMs).unref?.();
  }

  /**
   * The store failed this actor's load or commit (isStoreOutage): not the actor's fault, so it
   * is not counted toward maxRestarts; reload from durable state after a doubling, capped delay,
   * for as long as it takes. Its mailbox is kept meanwhile.
   */
  private retryAfterOutage(cell: Cell, err: Error): void {
    cell.generation++;
    const now = Date.now();
    // Reads alone never reset the backoff (a commit does): forget an outage long past.
    if (now - cell.lastOutage > 2 * this.outageMaxMs) cell.outages = 0;
    const delayMs = Math.min(this.outageBaseMs * 2 ** cell.outages, this.outageMaxMs);
    if (delayMs < this.outageMaxMs) cell.outages++;
    cell.lastOutage = now;
    cell.status = "restarting";
    this.log.warn({ address: cell.address, err: err?.message ?? String(err), retryInMs: delayMs }, "store unavailable; reloading the actor from its durable state");
    const generation = cell.generation;
    setTimeout(() => {
      if (cell.generation !== generation || cell.status !== "restarting" || this.stopping) return;
      cell.status = "loading";
      void this.load(cell, true);
    }, delayMs).unref?.();
  }

  private markFailed(cell: Cell, reason: string, persist: boolean): void {
    cell.generation++;
    cell.status = "failed";
    cell.failure = reason;
    for (const env of cell.queue.splice(0)) env.reply?.reject(new ActorFailedError(cell.address, reason));
    if (persist) {
      this.log.error({ address: cell.address, reason }, "actor stopped as failed");
      this.journal
        .append([{ op: "status", kind: cell.kind.name, actor_id: cell.id, status: "failed", failure: reason, at: this.clock() }])
        .catch((err: Error) => this.log.error({ address: cell.address, err: err.message }, "could not record actor failure"));
    }
  }

  /** A group commit failed: every actor with writes in it is ahead of its durable state. */
  private onCommitFailure(writes: Write[], err: Error): void {
    // The database refusing an actor's data is that actor's failure; an outage is no one's.
    const outage = isStoreOutage(err);
    if (outage) this.log.warn({ err: err.message, writes: writes.length }, "journal commit failed; the store is unavailable");
    else this.log.error({ err: err.message, writes: writes.length }, "journal commit failed");
    const hit = new Set<Address>();
    for (const w of writes) hit.add(`${w.kind}/${w.actor_id}` as Address);
    for (const address of hit) {
      const cell = this.cells.get(address);
      if (!cell || cell.status !== "running") continue;
      if (outage) this.retryAfterOutage(cell, err);
      else this.restart(cell, `journal commit failed: ${err.message}`);
    }
  }

  // ---- passivation --------------------------------------------------------------------------

  private sweep(): void {
    const now = this.clock();
    for (const cell of this.cells.values()) {
      if (cell.status === "running" && !cell.passivating && cell.pins === 0 && cell.depth === 0 && now - cell.lastActive >= cell.kind.options.idleMs) {
        this.passivate(cell, true);
      }
    }
  }

  /** Snapshots the actor as passive; if `evict`, it leaves memory once that is durable. */
  private passivate(cell: Cell, evict: boolean): void {
    const at = this.clock();
    const writes: Write[] = [];
    if (cell.seq > cell.snapSeq) {
      writes.push({ op: "snapshot", kind: cell.kind.name, actor_id: cell.id, seq: cell.seq, version: cell.kind.version, at, state: cell.kind.stepper.persist(cell.snapshot) });
      cell.snapSeq = cell.seq;
    }
    if (cell.markedActive) {
      writes.push({ op: "status", kind: cell.kind.name, actor_id: cell.id, status: "passive", at });
      cell.markedActive = false;
    }
    const seq = cell.seq;
    const leave = () => {
      cell.passivating = false;
      // Anything that arrived meanwhile keeps it resident; its next event marks it active again.
      if (evict && cell.status === "running" && cell.seq === seq && cell.depth === 0 && cell.pins === 0 && this.cells.get(cell.address) === cell) {
        this.cells.delete(cell.address);
      }
    };
    if (writes.length === 0) return leave();
    cell.passivating = true;
    const durable = this.journal.append(writes);
    cell.durable = durable;
    durable.then(leave, (err: Error) => {
      cell.passivating = false;
      this.log.warn({ address: cell.address, err: err.message }, "passivation snapshot failed");
    });
  }
}

export { ActorError };
