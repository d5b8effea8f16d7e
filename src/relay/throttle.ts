/**
 * A token bucket: `rate` tokens a second, at most `burst` saved up. Viewer input (S5) passes
 * one per frame and one per byte, so a viewer can type and paste freely but cannot flood the
 * agent. Time comes from the caller, which keeps it testable.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(private readonly rate: number, private readonly burst: number, now: number) {
    this.tokens = burst;
    this.last = now;
  }

  take(n: number, now: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
    if (this.tokens < n) return false;
    this.tokens -= n;
    return true;
  }
}

/** Viewer input limits: frames and bytes per second, with bursts for a paste. */
export const INPUT_LIMITS = {
  framesPerSecond: 500,
  frameBurst: 1_000,
  bytesPerSecond: 1024 * 1024,
  byteBurst: 256 * 1024,
  /** Control messages (open, resize, close, chat, end): far above a person's, far below a flood's. */
  controlPerSecond: 50,
  controlBurst: 200,
  /** Refused frames in a row before the viewer is disconnected. */
  maxRefusedInARow: 200,
};
