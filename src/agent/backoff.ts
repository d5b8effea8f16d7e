/**
 * Capped, jittered exponential backoff for reconnects: attempt n waits a random time in
 * [d/2, d] where d = min(cap, base · 2^n) ("equal jitter": never zero, never over the cap,
 * and a fleet that lost its server together does not come back in lockstep).
 */
export interface BackoffOptions {
  baseMs: number;
  capMs: number;
  random?: () => number;
}

export function backoffDelay(attempt: number, o: BackoffOptions): number {
  const random = o.random ?? Math.random;
  const ceiling = Math.min(o.capMs, o.baseMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

export class Backoff {
  private attempt = 0;
  constructor(private readonly options: BackoffOptions) {}

  /** The next delay; each call doubles the ceiling until the cap. */
  next(): number {
    return backoffDelay(this.attempt++, this.options);
  }

  /** After a connection that worked: start again from the base. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}

/** ± `fraction` of jitter around a fixed interval (slow retries, periodic work). */
export function jittered(ms: number, fraction = 0.1, random: () => number = Math.random): number {
  return Math.max(0, Math.round(ms * (1 - fraction + 2 * fraction * random())));
}

/**
 * How long to wait when a server said `Retry-After`: at least that long (never earlier: the
 * server asked), at least `floorMs` (`Retry-After: 0` from an overloaded server is no reason to
 * hammer it), plus up to `fraction` more so a fleet told the same time does not return at once.
 */
export function retryAfterDelay(retryAfterMs: number, fraction = 0.1, floorMs = 1_000, random: () => number = Math.random): number {
  const base = Math.max(floorMs, retryAfterMs);
  return Math.ceil(base * (1 + fraction * random()));
}

/**
 * A `Retry-After` header as milliseconds: delta-seconds or an HTTP date; null when absent or
 * unparseable.
 */
export function parseRetryAfter(value: string | null, now = Date.now()): number | null {
  if (value === null) return null;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  if (Number.isNaN(at)) return null;
  return Math.max(0, at - now);
}

/** Sleeps for `ms`, or less if `signal` aborts; resolves false when aborted. */
export function sleep(ms: number, signal?: AbortSignal): Promise<boolean> {
  if (signal?.aborted) return Promise.resolve(false);
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve(false);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve(true);
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
