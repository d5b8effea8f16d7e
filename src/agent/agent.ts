import { hostname } from "node:os";
import { CLOSE } from "../protocol/agent.ts";
import { Backoff, jittered, sleep } from "./backoff.ts";
import { agentSocketUrl, type AgentConfig } from "./config.ts";
import { runSession, type SessionEnd } from "./connection.ts";
import { enrollUntilDone, keyPrefix } from "./enroll.ts";
import { deriveMachineUid, loadOrCreateIdentity } from "./identity.ts";
import type { Logger } from "./log.ts";
import { fixedConsent, logPresenter } from "./session/consent.ts";
import { SessionHost } from "./session/host.ts";
import { StateDir, StateError } from "./state.ts";

/** Close codes after which the same key will not work until an admin acts: retry slowly, loudly. */
const REFUSALS: Record<number, string> = {
  [CLOSE.UNKNOWN_KEY]: "the server does not know this agent key (machine deleted or key never issued)",
  [CLOSE.KEY_REVOKED]: "this agent key was revoked by an admin",
  [CLOSE.MACHINE_REMOVED]: "this machine was removed by an admin",
  [CLOSE.MACHINE_PENDING]: "this machine is waiting for an admin's approval",
  [CLOSE.BAD_SIGNATURE]: "the server rejected this agent's signature (the key pair does not match the enrollment)",
  [CLOSE.WRONG_PLANE]: "the stored key is not an agent key",
};

export type AgentResult = { kind: "stopped" } | { kind: "fatal"; message: string };

/**
 * Managed mode: identity, enrollment on the first run only, then sessions forever. Returns
 * when `signal` aborts (SIGTERM/SIGINT) or on a state problem that must not be papered over.
 */
export async function runAgent(config: AgentConfig, log: Logger, signal: AbortSignal): Promise<AgentResult> {
  const state = new StateDir(config.stateDir);
  let creds;
  let identity;
  try {
    for (const fix of state.ensure()) log.warn({ event: "state.tightened", fix }, "state dir permissions were too open; fixed");
    creds = state.credentials();
    const loaded = await loadOrCreateIdentity(state);
    identity = loaded.identity;
    if (creds && loaded.created) {
      return { kind: "fatal", message: `${config.stateDir} has credentials but no private key; refusing to re-enroll (remove the state dir to enroll again)` };
    }
    if (loaded.created) log.info({ event: "identity.created" }, "generated the Ed25519 key pair");
  } catch (e) {
    if (e instanceof StateError) return { kind: "fatal", message: e.message };
    return { kind: "fatal", message: `state dir ${config.stateDir}: ${(e as Error).message}` };
  }

  if (creds) {
    log.info({ event: "credentials.loaded", machine_id: creds.machine_id, key_prefix: keyPrefix(creds.key) }, "using the stored agent key; not enrolling");
  } else {
    if (!config.siteCode || !config.enrollmentKey) {
      return { kind: "fatal", message: "not enrolled yet: --site-code and --enrollment-key are needed on the first run" };
    }
    const muid = deriveMachineUid(state, { machineIdFile: config.machineIdFile, productUuidFile: config.productUuidFile });
    log.info({ event: "identity.machine_uid", machine_uid: muid.uid, sources: muid.sources }, "machine_uid derived");
    if (muid.sources.includes("random")) log.warn({ event: "identity.random_uid" }, "no stable machine identifier readable; using a random one kept in the state dir");
    const done = await enrollUntilDone({
      server: config.server,
      servers: config.servers,
      request: {
        site_code: config.siteCode,
        enrollment_key: config.enrollmentKey,
        machine_uid: muid.uid,
        hostname: hostname(),
        labels: config.labels,
        public_key: identity.publicKey,
      },
      slowRetryMs: config.enrollRetryMs,
      shortRetryMs: config.enrollShortRetryMs,
    }, log, signal);
    if (!done) return { kind: "stopped" };
    creds = { machine_id: done.machineId, key: done.key, machine_uid: muid.uid, server: config.server, enrolled_at: new Date().toISOString() };
    state.saveCredentials(creds);
    log.info({ event: "credentials.saved", machine_id: creds.machine_id, key_prefix: keyPrefix(creds.key) }, "agent key stored");
  }
  config.enrollmentKey = undefined; // not needed again; do not keep it around

  // With several servers, a connection that never got its welcome moves on to the next one.
  const servers = config.servers?.length ? config.servers : [config.server];
  let at = 0;
  const backoff = new Backoff({ baseMs: config.reconnectBaseMs, capMs: config.reconnectCapMs });
  // Sessions live across reconnects (the grace period); consent on a service comes from a flag.
  const host = new SessionHost({ consent: fixedConsent(config.unattendedConsent === "allow", log), presenter: logPresenter(log), log, graceMs: config.sessionGraceMs });
  while (!signal.aborted) {
    const url = agentSocketUrl(servers[at % servers.length]!);
    log.info({ event: "connect.attempt", url, attempt: backoff.attempts + 1 }, "connecting");
    const end = await runSession({
      url,
      machineId: creds.machine_id,
      key: creds.key,
      privateKey: identity.privateKey,
      statusIntervalMs: config.statusIntervalMs,
      statusCheckMs: config.statusCheckMs,
      host,
    }, log, signal);
    if (signal.aborted || end.byUs) break;
    if (!end.welcomed) at++;
    // Through the list quickly (a dead primary, then its standby); back off once per full round.
    const delayMs = !end.welcomed && servers.length > 1 && at % servers.length !== 0 && !REFUSALS[end.code]
      ? jittered(Math.min(config.reconnectBaseMs, 500), 0.5)
      : nextDelay(end, backoff, config);
    const refusal = REFUSALS[end.code];
    if (refusal) {
      log.error({ event: "connect.refused", code: end.code, reason: end.reason, machine_id: creds.machine_id, key_prefix: keyPrefix(creds.key), retry_in_ms: delayMs }, `refused by the server: ${refusal}; retrying slowly (an admin can re-issue the key)`);
    } else {
      log.warn({ event: "connect.closed", code: end.code, reason: end.reason, welcomed: end.welcomed, retry_in_ms: delayMs }, end.code === CLOSE.SUPERSEDED ? "superseded by another connection of this machine; backing off" : "disconnected; reconnecting");
    }
    if (!(await sleep(delayMs, signal))) break;
  }
  await host.shutdown(); // shells and commands do not outlive the agent
  return { kind: "stopped" };
}

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
  if (end.welcomed) backoff.reset();
  return backoff.next();
}
