import { CLOSE } from "../protocol/agent.ts";
import { Backoff, jittered, sleep } from "./backoff.ts";
import { agentSocketUrl, type AgentConfig } from "./config.ts";
import { runSession, type SessionEnd } from "./connection.ts";
import { obtainCredentials } from "./credentials.ts";
import { keyPrefix } from "./enroll.ts";
import type { Logger } from "./log.ts";
import { fixedConsent, logPresenter } from "./session/consent.ts";
import { SessionHost } from "./session/host.ts";

/** Close codes after which the same key will not work until an admin acts: retry slowly, loudly. */
const REFUSALS: Record<number, string> = {
  [CLOSE.UNKNOWN_KEY]: "the server does not know this agent key (machine deleted or key never issued)",
  [CLOSE.KEY_REVOKED]: "this agent key was revoked by an admin",
  [CLOSE.MACHINE_REMOVED]: "this machine was removed by an admin",
  [CLOSE.MACHINE_PENDING]: "this machine is waiting for an admin's approval",
  [CLOSE.BAD_SIGNATURE]: "the server rejected this agent's signature (the key pair does not match the enrollment)",
  [CLOSE.WRONG_PLANE]: "the stored key is not an agent key",
  [CLOSE.MACHINE_DISABLED]: "this machine was disabled by an admin (enabling it lets this agent back in)",
  [CLOSE.UNSUPPORTED_PROTOCOL]: "the server does not speak this agent's protocol version (install the server's agent)",
};

export type AgentResult = { kind: "stopped" } | { kind: "fatal"; message: string; exitCode: number };

/**
 * Managed mode: credentials (stored, or an enrollment: credentials.ts), then sessions forever.
 * Returns when `signal` aborts (SIGTERM/SIGINT) or on a state problem that must not be papered
 * over (with the process's exit code: EXIT in credentials.ts).
 */
export async function runAgent(config: AgentConfig, log: Logger, signal: AbortSignal): Promise<AgentResult> {
  const obtained = await obtainCredentials(config, log, signal);
  if (obtained.kind !== "ready") return obtained;
  const { creds, identity } = obtained;
  config.enrollmentKey = undefined; // not needed again in this process; do not keep it around

  // With several servers, a connection that never got its welcome moves on to the next one.
  const servers = config.servers?.length ? config.servers : [config.server];
  let at = 0;
  /** Servers (by index) that did not read the hello in the upgrade's headers: sent as a frame to them. */
  const helloFrame = new Set<number>();
  const backoff = new Backoff({ baseMs: config.reconnectBaseMs, capMs: config.reconnectCapMs });
  // Sessions live across reconnects (the grace period); consent on a service comes from a flag.
  const host = new SessionHost({ consent: fixedConsent(config.unattendedConsent === "allow", log), presenter: logPresenter(log), log, graceMs: config.sessionGraceMs });
  while (!signal.aborted) {
    const index = at % servers.length;
    const url = agentSocketUrl(servers[index]!);
    log.info({ event: "connect.attempt", url, attempt: backoff.attempts + 1 }, "connecting");
    const end = await runSession({
      url,
      machineId: creds.machine_id,
      key: creds.key,
      privateKey: identity.privateKey,
      statusIntervalMs: config.statusIntervalMs,
      statusCheckMs: config.statusCheckMs,
      host,
      helloFrame: helloFrame.has(index),
    }, log, signal);
    if (signal.aborted || end.byUs) break;
    // Closed for want of a hello although the upgrade presented one: a server older than the
    // headers, or a proxy that strips them. The hello goes as a frame to it from now on.
    if (end.code === CLOSE.HANDSHAKE_TIMEOUT && !end.challenged && !helloFrame.has(index)) {
      helloFrame.add(index);
      log.warn({ event: "connect.hello_frame", url }, "the server did not read the hello in the upgrade's headers (an older server, or a proxy that strips them); sending it as a frame");
    }
    if (!end.welcomed) at++;
    // Through the list quickly (a dead primary, then its standby); back off once per full round.
    const delayMs = !end.welcomed && servers.length > 1 && at % servers.length !== 0 && !REFUSALS[end.code]
      ? jittered(Math.min(config.reconnectBaseMs, 500), 0.5)
      : nextDelay(end, backoff, config);
    const refusal = REFUSALS[end.code];
    if (refusal) {
      log.error({ event: "connect.refused", code: end.code, reason: end.reason, machine_id: creds.machine_id, key_prefix: keyPrefix(creds.key), retry_in_ms: delayMs }, `refused by the server: ${refusal}; retrying slowly (an admin can re-issue the key)`);
    } else {
      log.warn({ event: "connect.closed", code: end.code, reason: end.reason, welcomed: end.welcomed, connected_ms: end.connectedMs, retry_in_ms: delayMs }, end.code === CLOSE.SUPERSEDED ? "superseded by another connection of this machine; backing off" : "disconnected; reconnecting");
    }
    if (!(await sleep(delayMs, signal))) break;
  }
  await host.shutdown(); // shells and commands do not outlive the agent
  return { kind: "stopped" };
}

/**
 * The wait before the next connection. The backoff starts over only after a connection that
 * lasted at least the cap: a server that welcomes and then drops every connection at once
 * (a crash loop, a broken proxy) must not get a reconnect every second from every agent.
 */
export function nextDelay(end: SessionEnd, backoff: Backoff, config: Pick<AgentConfig, "refusedRetryMs" | "reconnectCapMs">): number {
  if (REFUSALS[end.code]) {
    backoff.reset();
    return jittered(config.refusedRetryMs);
  }
  if (end.code === CLOSE.SUPERSEDED) {
    // Another process holds this identity (a clone, or a stale instance): do not fight it.
    backoff.next();
    return jittered(config.reconnectCapMs);
  }
  if (end.welcomed && end.connectedMs >= config.reconnectCapMs) backoff.reset();
  return backoff.next();
}
