import type { ActorEvent, Address, Effect } from "./types.ts";

/**
 * Builders for the effects the host carries out itself. Logic emits them with XState's
 * `emit()`, computing deadlines from the event's `at`, never from the clock:
 *
 *   on: { ping: { actions: emit(({ event }) => effect.setTimer("expire", event.at + 30_000, { type: "expire" })) } }
 */
export const effect = {
  /** Answers the `ask` that delivered the current event. */
  reply: (data?: unknown): Effect => ({ type: "reply", data }),
  /** Sends an event to another actor once this event is durable (at most once across a crash). */
  send: (to: Address, event: ActorEvent): Effect => ({ type: "send", to, event }),
  /** Delivers `event` back to this actor at the absolute time `at`; same key replaces. */
  setTimer: (key: string, at: number, event: ActorEvent): Effect => ({ type: "timer.set", key, at, event }),
  cancelTimer: (key: string): Effect => ({ type: "timer.cancel", key }),
};
