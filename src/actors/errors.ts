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

/**
 * Whether an error from loading or committing is the store being unreachable or unwell (a
 * dropped connection, a restart, a full disk, the lease) rather than anything about this
 * actor: not the runtime's own errors (the logic throwing, a hydration or migration refusal)
 * and not the database refusing the data itself (`isDataError`), which no retry would cure.
 * Such errors are retried without end and do not count toward an actor's restart budget.
 */
export function isStoreOutage(err: unknown): boolean {
  return !(err instanceof ActorError) && !isDataError(err);
}
