/**
 * Ask timeouts without a timer per ask. Asks with the same timeout expire in the order they
 * were made, so each timeout value keeps a FIFO queue, and one coarse interval (running only
 * while asks are pending) expires the front of each. Precision: the tick, 25 ms.
 */
export interface Deadline {
  /** Marks the deadline met; the expiry callback (and what it holds) is let go at once. */
  settle(): void;
}

interface Entry extends Deadline {
  at: number;
  expire: (() => void) | null;
}

function settle(this: Entry): void {
  this.expire = null;
}

const TICK_MS = 25;

export class Deadlines {
  private readonly queues = new Map<number, { entries: Entry[]; head: number }>();
  private handle: ReturnType<typeof setInterval> | null = null;
  private pending = 0;

  /** Calls `expire` after `ms` unless the returned deadline is marked settled first. */
  add(ms: number, expire: () => void): Deadline {
    const entry: Entry = { at: performance.now() + ms, expire, settle };
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
        if (e.expire && e.at > now) break;
        q.head++;
        this.pending--;
        const expire = e.expire;
        e.expire = null;
        expire?.();
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
