/**
 * A fixed-window rate limit with a consecutive-failure lockout, per key (an IP, a username,
 * a site code and IP pair). In memory: it protects this process, which is the only one
 * serving. The map is capped; past the cap expired entries are pruned, and if none are, the
 * oldest entry goes.
 */
export interface LimiterOptions {
  windowMs: number;
  maxPerWindow: number;
  /** Consecutive failures that lock the key out. */
  maxFailures: number;
  lockoutMs: number;
  maxKeys?: number;
  now?: () => number;
}

interface Entry {
  windowStart: number;
  count: number;
  failures: number;
  lockedUntil: number;
}

export type Verdict = { ok: true } | { ok: false; retryAfterSec: number; reason: "rate_limited" | "locked_out" };

export class Limiter {
  private readonly entries = new Map<string, Entry>();
  private readonly now: () => number;

  constructor(private readonly options: LimiterOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Counts an attempt and says whether it may proceed. Lockout wins over the window. */
  check(key: string): Verdict {
    const now = this.now();
    const e = this.entry(key, now);
    if (e.lockedUntil > now) return { ok: false, reason: "locked_out", retryAfterSec: Math.ceil((e.lockedUntil - now) / 1000) };
    if (now - e.windowStart >= this.options.windowMs) {
      e.windowStart = now;
      e.count = 0;
    }
    e.count++;
    if (e.count > this.options.maxPerWindow) {
      return { ok: false, reason: "rate_limited", retryAfterSec: Math.max(1, Math.ceil((e.windowStart + this.options.windowMs - now) / 1000)) };
    }
    return { ok: true };
  }

  /** Records a failure; returns true when this one locked the key out. */
  failure(key: string): boolean {
    const now = this.now();
    const e = this.entry(key, now);
    e.failures++;
    if (e.failures >= this.options.maxFailures) {
      e.lockedUntil = now + this.options.lockoutMs;
      e.failures = 0; // the cooldown clears the streak
      return true;
    }
    return false;
  }

  success(key: string): void {
    const e = this.entries.get(key);
    if (e) e.failures = 0;
  }

  private entry(key: string, now: number): Entry {
    let e = this.entries.get(key);
    if (!e) {
      if (this.entries.size >= (this.options.maxKeys ?? 100_000)) this.prune(now);
      e = { windowStart: now, count: 0, failures: 0, lockedUntil: 0 };
      this.entries.set(key, e);
    }
    return e;
  }

  private prune(now: number): void {
    for (const [k, e] of this.entries) {
      if (e.lockedUntil <= now && now - e.windowStart >= this.options.windowMs && e.failures === 0) this.entries.delete(k);
    }
    if (this.entries.size >= (this.options.maxKeys ?? 100_000)) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
  }
}
