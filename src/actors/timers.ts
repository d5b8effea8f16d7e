import type { ActorEvent, Address } from "./types.ts";

export interface Timer {
  address: Address;
  key: string;
  dueAt: number;
  event: ActorEvent;
}

/** A heap entry: when to fire (the deadline, or later for a retry) and which deadline it is for. */
interface Firing extends Timer {
  fireAt: number;
}

/**
 * The host's timer wheel: every durable timer of every actor, resident or not, ordered by
 * deadline behind one `setTimeout`. A fired timer stays registered until its actor processes
 * it, so a timer set again or cancelled in between is recognised as stale and dropped.
 */
export class TimerService {
  private readonly timers = new Map<string, Timer & { fired: boolean }>();
  private readonly heap: Firing[] = [];
  private handle: ReturnType<typeof setTimeout> | null = null;
  private armedFor = Infinity;
  private stopped = false;

  constructor(
    private readonly fire: (timer: Timer) => void,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.timers.size;
  }

  set(timer: Timer): void {
    this.timers.set(keyOf(timer.address, timer.key), { ...timer, fired: false });
    push(this.heap, { ...timer, fireAt: timer.dueAt });
    this.arm();
  }

  /** A firing that could not be delivered: fire it again in `delayMs`, same deadline. */
  retry(timer: Timer, delayMs: number): void {
    const current = this.timers.get(keyOf(timer.address, timer.key));
    if (!current || current.dueAt !== timer.dueAt) return;
    current.fired = false;
    push(this.heap, { ...timer, fireAt: this.now() + delayMs });
    this.arm();
  }

  cancel(address: Address, key: string): void {
    this.timers.delete(keyOf(address, key));
  }

  /** True if this firing is still the timer's current deadline; forgets it either way. */
  consume(address: Address, key: string, dueAt: number): boolean {
    const k = keyOf(address, key);
    const current = this.timers.get(k);
    if (!current || current.dueAt !== dueAt) return false;
    this.timers.delete(k);
    return true;
  }

  /** Replaces one actor's timers with `timers` (its durable ones, after a failed commit). */
  resetActor(address: Address, timers: Timer[]): void {
    for (const [k, t] of this.timers) if (t.address === address) this.timers.delete(k);
    for (const t of timers) this.set(t);
  }

  stop(): void {
    this.stopped = true;
    if (this.handle) clearTimeout(this.handle);
    this.handle = null;
  }

  private arm(): void {
    if (this.stopped) return;
    const next = this.heap[0];
    if (!next || next.fireAt >= this.armedFor) return;
    if (this.handle) clearTimeout(this.handle);
    this.armedFor = next.fireAt;
    // setTimeout's delay is a signed 32-bit value; far deadlines re-arm on the way.
    const delay = Math.min(Math.max(0, next.fireAt - this.now()), 2 ** 31 - 1);
    this.handle = setTimeout(() => this.tick(), delay);
  }

  private tick(): void {
    this.handle = null;
    this.armedFor = Infinity;
    const now = this.now();
    // Pops in deadline order, so overdue timers fire oldest first.
    while (this.heap.length > 0 && this.heap[0]!.fireAt <= now) {
      const t = pop(this.heap)!;
      const current = this.timers.get(keyOf(t.address, t.key));
      if (!current || current.dueAt !== t.dueAt || current.fired) continue; // superseded entry
      current.fired = true;
      this.fire(current);
    }
    this.arm();
  }
}

const keyOf = (address: Address, key: string) => `${address}\u0000${key}`;

function push(heap: Firing[], t: Firing): void {
  heap.push(t);
  let i = heap.length - 1;
  while (i > 0) {
    const parent = (i - 1) >> 1;
    if (heap[parent]!.fireAt <= t.fireAt) break;
    heap[i] = heap[parent]!;
    i = parent;
  }
  heap[i] = t;
}

function pop(heap: Firing[]): Firing | undefined {
  const top = heap[0];
  const last = heap.pop();
  if (!last || heap.length === 0) return top;
  let i = 0;
  for (;;) {
    const l = 2 * i + 1;
    const r = l + 1;
    let m = i;
    let best = last.fireAt;
    if (l < heap.length && heap[l]!.fireAt < best) (m = l), (best = heap[l]!.fireAt);
    if (r < heap.length && heap[r]!.fireAt < best) m = r;
    if (m === i) break;
    heap[i] = heap[m]!;
    i = m;
  }
  heap[i] = last;
  return top;
}
