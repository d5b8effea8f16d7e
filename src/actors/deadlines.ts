/**
 * Ask timeouts without a timer per ask. Asks with the same timeout expire in the order they
 * were made, so each timeout value keeps a FIFO queue, and one coarse interval (running only
 * while asks are pending) expires the front of each. Precision: the tick, 25 ms.
 */
export interface Deadline {
  settled: boolean;
}

interface Entry extends Deadline {
  at: number;
  expire: () => void;
}

const TICK_MS = 25;

export class Deadlines {
  private readonly queues = new Map<number, { entries: Entry[]; head: number }>();
  private handle: ReturnType<typeof setInterval> | null = null;
  private pending = 0;

  /** Calls `expire` after `ms` unless the returned deadline is marked settled first. */
  add(ms: number, expire: () => void): Deadline {
    const entry: Entry = { at: performance.now() + ms, expire, settled: false };
    let q = this.queues.get(ms);
    if (!q) this.queues.set(ms, (q = { entries: [], head: 0 }));
    q.entries.push(entry);
    this.pending++;
    if (!this.handle) {
      this.handle = setInterval(() => this.tick(), TICK_MS);
      this.handle.unref?.();
    }
    return entry;
  }

  stop(): void {
    if (this.handle) clearInterval(this.handle);
    this.handle = null;
  }

  private tick(): void {
    const now = performance.now();
    for (const [ms, q] of this.queues) {
      while (q.head < q.entries.length) {
        const e = q.entries[q.head]!;
        if (!e.settled && e.at > now) break;
        q.head++;
        this.pending--;
        if (!e.settled) {
          e.settled = true;
          e.expire();
        }
      }
      if (q.head === q.entries.length) this.queues.delete(ms);
      else if (q.head > 1024 && q.head * 2 > q.entries.length) {
        q.entries = q.entries.slice(q.head);
        q.head = 0;
      }
    }
    if (this.pending === 0 && this.handle) {
      clearInterval(this.handle);
      this.handle = null;
    }
  }
}
