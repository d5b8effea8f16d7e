import type { KindOptions } from "./types.ts";

/** The restart policy, as pure arithmetic over an actor's recent failure times. */
export type Verdict = { action: "restart"; delayMs: number; recent: number[] } | { action: "stop"; recent: number[] };

export function onFailure(previous: readonly number[], now: number, options: KindOptions): Verdict {
  const recent = previous.filter((t) => now - t < options.failureWindowMs);
  recent.push(now);
  if (recent.length > options.maxRestarts) return { action: "stop", recent };
  const delayMs = Math.min(options.backoffBaseMs * 2 ** (recent.length - 1), options.backoffMaxMs);
  return { action: "restart", delayMs, recent };
}
