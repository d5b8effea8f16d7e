import type { AnyStateMachine, StateValue } from "xstate";

/** `kind/id`, e.g. `machine/7f3a…`. The kind names a registered logic; the id is free text. */
export type Address = `${string}/${string}`;

/** What callers send. The host stamps `at` (epoch ms) on it: logic reads time only from there. */
export interface ActorEvent {
  type: string;
  [key: string]: unknown;
}
export type StampedEvent = ActorEvent & { at: number };

/**
 * Effects are what the logic asks the world to do, by XState `emit()`. The host runs them only
 * after the event that produced them is durable. These four the host handles itself; any other
 * type goes to the kind's `effects` handler.
 */
export type HostEffect =
  | { type: "reply"; data?: unknown }
  | { type: "send"; to: Address; event: ActorEvent }
  | { type: "timer.set"; key: string; at: number; event: ActorEvent }
  | { type: "timer.cancel"; key: string };
export type Effect = HostEffect | { type: string; [key: string]: unknown };

/** A persisted XState snapshot (JSON). Migrations map one version's shape to the next. */
export type PersistedState = Record<string, unknown>;
export type Migration = (state: PersistedState) => PersistedState;

export interface EffectContext {
  address: Address;
  id: string;
  /** The actor's state after the event (read-only view). */
  value: StateValue;
  context: unknown;
}

export interface KindOptions {
  /** Journal entries between snapshots. */
  snapshotEvery: number;
  /** Idle time after which an unpinned actor is snapshotted and leaves memory. */
  idleMs: number;
  /** Events queued or not yet durable, per actor, beyond which senders get MailboxFullError. */
  mailboxLimit: number;
  /** Restarts allowed within `failureWindowMs`; the next failure stops the actor as failed. */
  maxRestarts: number;
  failureWindowMs: number;
  /** Restart backoff: base * 2^(failures-1), capped. */
  backoffBaseMs: number;
  backoffMaxMs: number;
}

export interface KindDefinition<TLogic extends AnyStateMachine = AnyStateMachine> {
  kind: string;
  logic: TLogic;
  /** Bump when the persisted shape changes; register a migration from the previous one. */
  version: number;
  /** `migrations[n]` turns a version-n snapshot into version n+1. */
  migrations?: Record<number, Migration>;
  /** The machine's input for a new actor with this id. Must be deterministic. */
  input?: (id: string) => unknown;
  /** Handlers for effect types the host does not know. Run after durability, in order. */
  effects?: Record<string, (effect: Effect, ctx: EffectContext) => void | Promise<void>>;
  options?: Partial<KindOptions>;
}

export interface AskResult<TReply = unknown> {
  /** `data` of the `reply` effect the event produced, if any. */
  reply: TReply | undefined;
  value: StateValue;
  context: unknown;
  seq: number;
}

export type ActorStatus = "loading" | "running" | "restarting" | "failed" | "stopped";

export const DEFAULT_KIND_OPTIONS: KindOptions = {
  snapshotEvery: 100,
  idleMs: 5 * 60_000,
  mailboxLimit: 1_000,
  maxRestarts: 5,
  failureWindowMs: 60_000,
  backoffBaseMs: 100,
  backoffMaxMs: 10_000,
};

export function parseAddress(address: string): { kind: string; id: string } {
  const slash = address.indexOf("/");
  if (slash <= 0 || slash === address.length - 1) throw new Error(`not an actor address: ${JSON.stringify(address)}`);
  return { kind: address.slice(0, slash), id: address.slice(slash + 1) };
}
