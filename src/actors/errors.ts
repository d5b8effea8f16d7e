import { isDataError } from "./isolate.ts";

/** Errors the runtime gives to senders. Each carries a stable code for the HTTP error envelope. */
export class ActorError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

export class MailboxFullError extends ActorError {
  constructor(address: string, limit: number) {
    super("ACTOR_MAILBOX_FULL", `mailbox of ${address} is full (${limit} events queued or in flight)`);
  }
}
export class AskTimeoutError extends ActorError {
  constructor(address: string, ms: number) {
    super("ACTOR_ASK_TIMEOUT", `${address} did not answer within ${ms} ms`);
  }
}
export class ActorFailedError extends ActorError {
  constructor(address: string, reason: string) {
    super("ACTOR_FAILED", `${address} is stopped as failed: ${reason}`);
  }
}
export class EventRejectedError extends ActorError {
  constructor(address: string, cause: string) {
    super("ACTOR_EVENT_REJECTED", `${address} threw on this event and was restarted: ${cause}`);
  }
}
export class UnknownKindError extends ActorError {
  constructor(kind: string) {
    super("ACTOR_UNKNOWN_KIND", `no actor kind ${JSON.stringify(kind)} is registered`);
  }
}
export class NotDurableError extends ActorError {
  constructor(address: string, cause: string) {
    super("ACTOR_NOT_DURABLE", `the event to ${address} could not be journaled: ${cause}`);
  }
}
export class SystemStoppedError extends ActorError {
  constructor() {
    super("ACTOR_SYSTEM_STOPPED", "the actor system is shutting down");
  }
}
/** A failure no restart can cure (e.g. a snapshot of an unknown version): fail at once. */
export class PermanentActorError extends ActorError {
  constructor(message: string) {
    super("ACTOR_PERMANENT_FAILURE", message);
  }
}

/** SQLSTATE classes of a database that is unreachable or unwell for now: connection, resources, shutdown, serialization, lock. */
const TRANSIENT_SQLSTATE = /^(08|53|57P|58|40001|40P01|55P03)/;
/** Socket errors, postgres.js's connection errors, and the primary's lease (src/cluster/lease.ts). */
const TRANSIENT_CODE = /^(E(CONN(REFUSED|RESET|ABORTED)|PIPE|TIMEDOUT|HOSTUNREACH|NETUNREACH|AI_AGAIN)|CONNECTION_|CONNECT_TIMEOUT|LEASE_LOST)/;
/** What errors without a code say when the connection or the embedded database's thread went. */
const TRANSIENT_MESSAGE = /connect|connection|terminat|closed|timed? ?out|socket|worker exited/i;

/**
 * Whether an error from loading or committing is the store being unreachable or unwell (a
 * dropped connection, a restart, the lease) rather than anything about this actor. Such errors
 * are retried without end and do not count toward an actor's restart budget. Anything else (the
 * runtime's own errors, the database refusing the data or the statement, a snapshot that does
 * not serialize) goes the restart way, counted, so an error no retry cures ends in a failed
 * actor an operator can see and revive.
 */
export function isStoreOutage(err: unknown): boolean {
  if (err instanceof ActorError || isDataError(err)) return false;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string") return TRANSIENT_SQLSTATE.test(code) || TRANSIENT_CODE.test(code);
  return TRANSIENT_MESSAGE.test(err instanceof Error ? err.message : String(err));
}
