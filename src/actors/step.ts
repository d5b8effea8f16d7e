import { createActor, type AnyActorScope, type AnyMachineSnapshot, type AnyStateMachine } from "xstate";
import { PermanentActorError } from "./errors.ts";
import type { Effect, PersistedState, StampedEvent } from "./types.ts";

// Shared by every step that emits nothing: most events, on the hot path.
const NO_EFFECTS: Effect[] = Object.freeze([]) as unknown as Effect[];

/**
 * Pure transitions for one logic. This is XState's `transition()` / `initialTransition()`, with
 * one difference: XState builds a throw-away actor scope on every call (a quarter of its
 * throughput); our actors are flat (no spawned children), so one inert scope per logic is
 * reused. Actions are collected, never executed; `emit` actions become the effects.
 */
export class Stepper {
  private readonly scope: AnyActorScope;
  private readonly collected: Array<{ type: string; params?: unknown }> = [];

  constructor(readonly logic: AnyStateMachine) {
    const self = createActor(logic);
    this.scope = {
      self,
      system: self.system,
      id: "",
      sessionId: "",
      logger: () => {},
      defer: () => {},
      stopChild: () => {},
      emit: () => {},
      actionExecutor: (action: { type: string; params?: unknown }) => void this.collected.push(action),
    } as unknown as AnyActorScope;
  }

  initial(input: unknown): { snapshot: AnyMachineSnapshot; effects: Effect[] } {
    this.collected.length = 0;
    const snapshot = this.logic.getInitialSnapshot(this.scope, input) as AnyMachineSnapshot;
    return { snapshot, effects: this.effects(snapshot) };
  }

  /** The next snapshot and its effects; `changed` is false when no transition was enabled. */
  step(snapshot: AnyMachineSnapshot, event: StampedEvent): { snapshot: AnyMachineSnapshot; effects: Effect[]; changed: boolean } {
    this.collected.length = 0;
    const next = this.logic.transition(snapshot, event, this.scope) as AnyMachineSnapshot;
    return { snapshot: next, effects: this.effects(next), changed: next !== snapshot };
  }

  persist(snapshot: AnyMachineSnapshot): PersistedState {
    return this.logic.getPersistedSnapshot(snapshot) as PersistedState;
  }

  /** Rebuilds a live snapshot from its persisted JSON; throws PermanentActorError if it cannot. */
  restore(state: PersistedState): AnyMachineSnapshot {
    try {
      const snapshot = this.logic.resolveState({
        value: state.value as never,
        context: state.context as never,
        historyValue: state.historyValue as never,
        status: state.status as never,
        output: state.output,
        error: state.error,
      } as never) as AnyMachineSnapshot;
      if (snapshot.status === "error") throw new Error("snapshot is in the error status");
      return snapshot;
    } catch (err) {
      throw new PermanentActorError(`snapshot does not fit the logic: ${(err as Error).message}`);
    }
  }

  private effects(snapshot: AnyMachineSnapshot): Effect[] {
    // XState reports errors in actions through the snapshot, not by throwing.
    if (snapshot.status === "error") throw snapshot.error instanceof Error ? snapshot.error : new Error(String(snapshot.error));
    let out: Effect[] = NO_EFFECTS;
    for (const action of this.collected) {
      if (action.type !== "xstate.emit") continue;
      if (out === NO_EFFECTS) out = [];
      out.push((action.params as { event: Effect }).event);
    }
    return out;
  }
}
