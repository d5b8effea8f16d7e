import { EnrollResponse, type EnrollRequest } from "../protocol/machines.ts";
import type { z } from "zod";
import { jittered, parseRetryAfter, retryAfterDelay, sleep } from "./backoff.ts";
import type { Logger } from "./log.ts";

/**
 * First-run enrollment (M1, reference §6 "Agent side"). One attempt is classified into
 * "store and connect" or "retry after N ms"; `enrollUntilDone` repeats it and never gives up:
 *   201/200 with a key      → done
 *   202 collision_pending   → slow retry (an admin approves or rejects the clone)
 *   401 / 409               → slow retry (wrong or rotated key, machine bound to another site)
 *   429                     → Retry-After, never earlier, at least 1 s (short retry when absent)
 *   network, 5xx, anything undecodable, 2xx without a key → short retry
 */
export interface EnrollParams {
  server: string;
  /** Servers to try in turn after a network error or a 5xx (a standby answers 503). */
  servers?: string[];
  request: z.input<typeof EnrollRequest>;
  slowRetryMs: number;
  shortRetryMs: number;
  timeoutMs?: number;
}

export type Attempt =
  | { kind: "enrolled"; machineId: string; key: string; disposition: "new" | "reuse" }
  | { kind: "retry"; delayMs: number; reason: string; status?: number; machineId?: string; retryAfterMs?: number };

export async function enrollOnce(p: EnrollParams, signal?: AbortSignal): Promise<Attempt> {
  let res: Response;
  try {
    const timeout = AbortSignal.timeout(p.timeoutMs ?? 30_000);
    res = await fetch(`${p.server}/api/enroll`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(p.request),
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
  } catch (e) {
    return { kind: "retry", delayMs: p.shortRetryMs, reason: `network: ${(e as Error).message}` };
  }
  const status = res.status;
  let body: unknown = null;
  try {
    body = await res.json();
  } catch {}
  const parsed = EnrollResponse.safeParse(body);
  if (status === 201 || status === 200) {
    if (parsed.success && parsed.data.key && parsed.data.disposition !== "collision_pending") {
      return { kind: "enrolled", machineId: parsed.data.machine_id, key: parsed.data.key, disposition: parsed.data.disposition };
    }
    return { kind: "retry", delayMs: p.shortRetryMs, reason: "accepted without a key", status };
  }
  if (status === 202) {
    return { kind: "retry", delayMs: p.slowRetryMs, reason: "collision_pending: waiting for an admin to approve this machine", status, machineId: parsed.success ? parsed.data.machine_id : undefined };
  }
  if (status === 401) return { kind: "retry", delayMs: p.slowRetryMs, reason: "rejected: unknown site, or wrong or rotated enrollment key", status };
  if (status === 409) return { kind: "retry", delayMs: p.slowRetryMs, reason: "site conflict: this machine is enrolled at another site", status };
  if (status === 429) {
    const after = parseRetryAfter(res.headers.get("retry-after"));
    if (after === null) return { kind: "retry", delayMs: p.shortRetryMs, reason: "rate limited", status };
    return { kind: "retry", delayMs: after, retryAfterMs: after, reason: "rate limited", status };
  }
  return { kind: "retry", delayMs: p.shortRetryMs, reason: status >= 500 ? "server error" : "unexpected answer", status };
}

/** Enrolls, retrying forever; null when `signal` aborted first. */
export async function enrollUntilDone(p: EnrollParams, log: Logger, signal: AbortSignal): Promise<Extract<Attempt, { kind: "enrolled" }> | null> {
  const servers = p.servers?.length ? p.servers : [p.server];
  let at = 0;
  for (let attempt = 1; !signal.aborted; attempt++) {
    const server = servers[at % servers.length]!;
    log.info({ event: "enroll.attempt", attempt, server, site_code: p.request.site_code, machine_uid: p.request.machine_uid }, "enrolling");
    const a = await enrollOnce({ ...p, server }, signal);
    if (signal.aborted) return null;
    if (a.kind === "enrolled") {
      log.info({ event: "enroll.done", disposition: a.disposition, machine_id: a.machineId, key_prefix: keyPrefix(a.key) }, "enrolled");
      return a;
    }
    // Retry-After is a minimum (jitter only adds); the fixed intervals get ±10 % so a fleet spreads out.
    const delayMs = a.retryAfterMs !== undefined ? retryAfterDelay(a.retryAfterMs) : jittered(a.delayMs);
    const level = a.status === 401 || a.status === 409 ? "error" : "warn";
    log[level]({ event: "enroll.retry", attempt, status: a.status, reason: a.reason, machine_id: a.machineId, retry_in_ms: delayMs }, `enrollment not done: ${a.reason}; retrying`);
    // Unreachable or a standby: the next server may be the primary.
    if (a.status === undefined || a.status >= 500) at++;
    if (!(await sleep(delayMs, signal))) return null;
  }
  return null;
}

/** What may be logged of a secret: its type prefix and a few characters. */
export function keyPrefix(key: string): string {
  return key.slice(0, 12) + "…";
}
