import type { AnyMachineSnapshot } from "xstate";
import type { Appended } from "./journal.ts";
import type { Kind } from "./kind.ts";
import type { ActorEvent, ActorStatus, Address, AskResult, Effect } from "./types.ts";

/** One message in a mailbox: an event (maybe asked, maybe a fired timer) or a read. */
export interface Envelope {
  event: ActorEvent | null; // null: a read that only waits its turn (inspect)
  reply?: Reply;
  timer?: { key: string; dueAt: number };
}

export interface Reply {
  resolve(result: AskResult): void;
  reject(err: Error): void;
}

/** A resident actor: its live snapshot, its mailbox, and what it has in flight. */
export class Cell {
  status: ActorStatus = "loading";
  snapshot!: AnyMachineSnapshot;
  /** Last accepted sequence number, and the one of the last snapshot written. */
  seq = 0;
  snapSeq = 0;
  readonly queue: Envelope[] = [];
  /** Accepted events not yet durable. Counted against the mailbox limit. */
  inflight = 0;
  /** Settles when every event accepted so far is durable (or failed to be). */
  durable: Appended = Promise.resolve();
  /** Entry effects of a brand-new actor's initial state, run with its first event. */
  initialEffects: Effect[] | null = null;
  pins = 0;
  lastActive = 0;
  /** Whether the `actors` row says 'active' (so a crash would recover this actor at start). */
  markedActive = false;
  draining = false;
  /** A passivation snapshot is committing; the sweeper leaves the cell alone until it settles. */
  passivating = false;
  /** Bumped on every restart, so callbacks of an older incarnation know they are stale. */
  generation = 0;
  failures: number[] = [];
  failure: string | null = null;
  /** Store outages in a row (they set the reload backoff; not counted as failures), and the last one's time. */
  outages = 0;
  lastOutage = 0;
  /** A revive is storing this failed actor's 'passive' status. */
  reviving = false;

  constructor(
    readonly address: Address,
    readonly id: string,
    readonly kind: Kind,
  ) {}

  get depth(): number {
    return this.queue.length + this.inflight;
  }

  view(): Omit<AskResult, "reply"> {
    return { value: this.snapshot.value, context: this.snapshot.context, seq: this.seq };
  }
}
