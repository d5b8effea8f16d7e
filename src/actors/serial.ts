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
