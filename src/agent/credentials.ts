import { hostname } from "node:os";
import type { AgentConfig } from "./config.ts";
import { enrollUntilDone, keyPrefix } from "./enroll.ts";
import { createIdentity, deriveMachineUid, loadIdentity, sameMachine, type Identity } from "./identity.ts";
import type { Logger } from "./log.ts";
import { CorruptCredentials, FILES, StateDir, StateError, type Credentials } from "./state.ts";

/**
 * The credentials a managed agent connects with (M7): the stored ones when they belong to this
 * machine, else an enrollment. Cases, decided at each start:
 *   nothing stored                  → enroll (first run; needs --site-code and --enrollment-key)
 *   stored, machine_uid matches     → use them; never enroll again
 *   stored, a source reads          → a cloned VM or disk: enroll as a new machine with a fresh
 *   differently (uid_parts)           key pair, or stop with EXIT.CLONED without an enrollment key
 *   stored, machine_uid differs but → a source unreadable this time (product_uuid as non-root),
 *   no source to tell by              or credentials of an older agent: use them, with a warning
 *   credentials.json unusable, or   → a power loss under an older agent, an edit: enroll again
 *   the private key missing/broken    as the same machine (the server reuses its row by
 *                                     machine_uid and revokes the old key), or stop with
 *                                     EXIT.STATE without an enrollment key
 * Each case is logged with what to do; keys never are (key_prefix at most).
 */
export const EXIT = {
  /** SIGTERM/SIGINT: stopped cleanly. */
  STOPPED: 0,
  /** Bad usage (config.ts). */
  USAGE: 2,
  /** The state dir is unusable and the agent cannot re-enroll (no enrollment key), or cannot be written. */
  STATE: 3,
  /** The state dir was enrolled on another machine (machine_uid differs) and there is no enrollment key. */
  CLONED: 6,
} as const;

export type Obtained =
  | { kind: "ready"; creds: Credentials; identity: Identity }
  | { kind: "stopped" }
  | { kind: "fatal"; message: string; exitCode: number };

const HOW_TO_ENROLL = "set the site code and enrollment key (--site-code and --enrollment-key, or TETHER_AGENT_SITE_CODE and TETHER_AGENT_ENROLLMENT_KEY in /etc/tether/agent.env) and start the agent again";

export async function obtainCredentials(config: AgentConfig, log: Logger, signal: AbortSignal): Promise<Obtained> {
  const state = new StateDir(config.stateDir);
  const canEnroll = !!(config.siteCode && config.enrollmentKey);
  const fatal = (message: string, exitCode: number = EXIT.STATE): Obtained => ({ kind: "fatal", message, exitCode });
  try {
    for (const fix of state.ensure()) log.warn({ event: "state.tightened", fix }, "state dir permissions were too open; fixed");
    let identity: Identity | null;
    let creds: Credentials | null;
    /** Why the stored state cannot be used as it is (then: enroll again as this machine). */
    let unusable: string | null = null;
    try {
      identity = await loadIdentity(state);
    } catch (e) {
      if (!(e instanceof StateError)) throw e;
      identity = null;
      unusable = e.message;
    }
    try {
      creds = state.credentials();
    } catch (e) {
      if (!(e instanceof CorruptCredentials)) throw e;
      creds = null;
      unusable ??= e.message;
    }
    if (creds && !identity && !unusable) unusable = `${state.path(FILES.privateKey)} is missing but ${state.path(FILES.credentials)} is there`;
    const muid = deriveMachineUid(state, { machineIdFile: config.machineIdFile, productUuidFile: config.productUuidFile });
    const identityCheck = creds && identity ? sameMachine(creds, muid) : null;

    if (unusable) {
      if (!canEnroll) {
        return fatal(`${unusable}: the agent cannot connect without its credentials and private key. To recover, ${HOW_TO_ENROLL}: it enrolls again as this same machine (the server revokes its earlier key); or remove ${config.stateDir} and enroll it that way`);
      }
      log.warn({ event: "state.unusable", problem: unusable }, "the stored credentials cannot be used; enrolling again as this machine (the server revokes its earlier key)");
    } else if (creds && identity && identityCheck === "unverified") {
      // Not proof of a clone: re-enrolling as a new machine would leave the real one a ghost.
      log.warn({ event: "identity.unverified", stored_machine_uid: creds.machine_uid, machine_uid: muid.uid, sources: muid.sources, machine_id: creds.machine_id },
        "this machine's identifiers read differently from when it enrolled, with none to compare (one unreadable now?); using the stored credentials");
      return { kind: "ready", creds, identity };
    } else if (creds && identity && identityCheck === "cloned") {
      const fields = { event: "identity.cloned", stored_machine_uid: creds.machine_uid, machine_uid: muid.uid, sources: muid.sources, machine_id: creds.machine_id };
      if (!canEnroll) {
        log.error(fields, "this state dir was enrolled on another machine (a cloned VM or disk?)");
        return fatal(`${config.stateDir} was enrolled on another machine: its machine_uid differs from this machine's (a VM or disk cloned after enrollment?), and both copies would share one identity. To enroll this copy as a new machine, ${HOW_TO_ENROLL}; or remove ${config.stateDir} and enroll it that way`, EXIT.CLONED);
      }
      log.warn(fields, "this state dir was enrolled on another machine (a cloned VM or disk?); enrolling this one as a new machine with a fresh key pair");
      unusable = "cloned";
    } else if (creds && identity) {
      // Credentials of an older agent gain the fingerprints while the uid still matches.
      if (!creds.uid_parts && creds.machine_uid === muid.uid) state.saveCredentials((creds = { ...creds, uid_parts: muid.parts }));
      log.info({ event: "credentials.loaded", machine_id: creds.machine_id, key_prefix: keyPrefix(creds.key) }, "using the stored agent key; not enrolling");
      return { kind: "ready", creds, identity };
    }

    if (!canEnroll) return fatal("not enrolled yet: --site-code and --enrollment-key are needed on the first run");
    if (unusable) {
      // Old credentials first: a crash from here on leaves a state dir that simply enrolls.
      state.remove(FILES.credentials);
      identity = null; // a clone must not keep the original's key pair; a broken one is replaced
    }
    if (!identity) {
      identity = await createIdentity(state);
      log.info({ event: "identity.created" }, "generated the Ed25519 key pair");
    }
    log.info({ event: "identity.machine_uid", machine_uid: muid.uid, sources: muid.sources }, "machine_uid derived");
    if (muid.sources.includes("random")) log.warn({ event: "identity.random_uid" }, "no stable machine identifier readable; using a random one kept in the state dir");
    const done = await enrollUntilDone({
      server: config.server,
      servers: config.servers,
      request: {
        site_code: config.siteCode!,
        enrollment_key: config.enrollmentKey!,
        machine_uid: muid.uid,
        hostname: hostname(),
        labels: config.labels,
        public_key: identity.publicKey,
      },
      slowRetryMs: config.enrollRetryMs,
      shortRetryMs: config.enrollShortRetryMs,
    }, log, signal);
    if (!done) return { kind: "stopped" };
    const fresh: Credentials = { machine_id: done.machineId, key: done.key, machine_uid: muid.uid, uid_parts: muid.parts, server: config.server, enrolled_at: new Date().toISOString() };
    state.saveCredentials(fresh);
    log.info({ event: "credentials.saved", machine_id: fresh.machine_id, key_prefix: keyPrefix(fresh.key) }, "agent key stored");
    return { kind: "ready", creds: fresh, identity };
  } catch (e) {
    return fatal(`state dir ${config.stateDir}: ${(e as Error).message}`);
  }
}
