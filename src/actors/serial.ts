/**
 * Runs async work one after another per key, in the order it was handed in. Effects run after
 * durability without waiting for each other; a projection (a row that mirrors an actor's
 * state) must still be written in event order, or a quick active → ended could land as
 * "active". `settled(key)` lets a reader wait for the writes handed in so far.
 */
export class Serial {
  private readonly tails = new Map<string, Promise<void>>();

  run(key: string, work: () => Promise<unknown>): Promise<void> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(work).then(() => {}, (err) => {
      throw err;
    });
    const tail = next.catch(() => {});
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }

  settled(key: string): Promise<void> {
    return this.tails.get(key) ?? Promise.resolve();
  }
}

/**
 * Group commit for small writes and reads: items handed in while a batch runs go into the next
 * one, and the first batch waits for the end of the current tick, so a burst becomes a few
 * statements instead of one per item. `run` answers one result per item (in order) or nothing;
 * if it throws, every item of that batch is rejected with the error. `flush()` resolves once
 * everything handed in so far is done.
 *
 * `concurrency`: how many batches may run at once (default one, in the order items were handed
 * in). More suits reads: while one batch waits for the database, the next is on its way, instead
 * of a burst's batches going one round trip after another.
 */
export class Batcher<T, R = void> {
  private queue: Array<{ item: T; resolve: (r: R) => void; reject: (e: unknown) => void }> = [];
  private running = 0;
  private scheduled = false;
  private idle: Array<() => void> = [];

  constructor(
    private readonly run: (items: T[]) => Promise<R[] | void>,
    private readonly maxBatch = 1_000,
    private readonly concurrency = 1,
  ) {
    if (!(Number.isInteger(maxBatch) && maxBatch >= 1 && Number.isInteger(concurrency) && concurrency >= 1)) {
      throw new Error(`Batcher: maxBatch and concurrency must be integers of at least 1 (${maxBatch}, ${concurrency})`);
    }
  }

  add(item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.wake();
    });
  }

  get pending(): number {
    return this.queue.length;
  }

  async flush(): Promise<void> {
    while (this.running > 0 || this.scheduled) await new Promise<void>((r) => this.idle.push(r));
  }

  /** Starts a batch at the end of this tick if one more may run. */
  private wake(): void {
    if (this.scheduled || this.running >= this.concurrency) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      while (this.running < this.concurrency && this.queue.length > 0) void this.loop();
      this.settled();
    });
  }

  /** Runs batches until the queue is empty (its first batch taken before it awaits anything). */
  private async loop(): Promise<void> {
    this.running++;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, this.maxBatch);
        try {
          const results = await this.run(batch.map((b) => b.item));
          for (let i = 0; i < batch.length; i++) batch[i]!.resolve(results ? results[i]! : (undefined as R));
        } catch (err) {
          for (const b of batch) b.reject(err);
        }
      }
    } finally {
      this.running--;
      this.settled();
    }
  }

  private settled(): void {
    if (this.running > 0 || this.scheduled) return;
    const idle = this.idle;
    this.idle = [];
    for (const r of idle) r();
  }
}
