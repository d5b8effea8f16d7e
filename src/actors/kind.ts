import type { AnyMachineSnapshot } from "xstate";
import { PermanentActorError } from "./errors.ts";
import type { StoredActor } from "./repository.ts";
import { Stepper } from "./step.ts";
import { DEFAULT_KIND_OPTIONS, type Effect, type KindDefinition, type KindOptions, type PersistedState } from "./types.ts";

/** A registered kind: its definition with defaults applied, its stepper and its counters. */
export class Kind {
  readonly name: string;
  readonly options: KindOptions;
  readonly stepper: Stepper;
  // Plain counters on the hot path; the metrics registry reads them when scraped.
  events = 0;
  restarts = 0;
  effectErrors = 0;

  constructor(readonly def: KindDefinition) {
    if (!/^[a-z][a-z0-9_-]*$/.test(def.kind)) throw new Error(`kind name ${JSON.stringify(def.kind)} must be lower-case letters, digits, - or _`);
    if (!Number.isInteger(def.version) || def.version < 1) throw new Error(`kind ${def.kind}: version must be a positive integer`);
    this.name = def.kind;
    this.options = { ...DEFAULT_KIND_OPTIONS, ...def.options };
    this.stepper = new Stepper(def.logic);
  }

  get version(): number {
    return this.def.version;
  }

  initial(id: string): { snapshot: AnyMachineSnapshot; effects: Effect[] } {
    return this.stepper.initial(this.def.input?.(id));
  }

  /** Brings a persisted snapshot of any earlier version up to this one, or refuses clearly. */
  migrate(state: PersistedState, from: number, address: string): PersistedState {
    if (from > this.version)
      throw new PermanentActorError(`${address}: snapshot is version ${from}, newer than the running logic (version ${this.version})`);
    let out = state;
    for (let v = from; v < this.version; v++) {
      const step = this.def.migrations?.[v];
      if (!step) throw new PermanentActorError(`${address}: snapshot is version ${from}; no migration from version ${v} to ${v + 1} is registered`);
      try {
        out = step(out);
      } catch (err) {
        throw new PermanentActorError(`${address}: migration from version ${v} failed: ${(err as Error).message}`);
      }
    }
    return out;
  }

  /**
   * The live state from storage: the latest snapshot (migrated if need be) plus the journal
   * tail, replayed through the pure logic. Effects of replayed events are not run again.
   */
  hydrate(stored: StoredActor, address: string): { snapshot: AnyMachineSnapshot; seq: number; snapSeq: number; initialEffects: Effect[] | null } {
    let snapshot: AnyMachineSnapshot;
    let seq = 0;
    let initialEffects: Effect[] | null = null;
    if (stored.snapshot) {
      snapshot = this.stepper.restore(this.migrate(stored.snapshot.state, stored.snapshot.version, address));
      seq = stored.snapshot.seq;
    } else {
      const init = this.initial(stored.id);
      snapshot = init.snapshot;
      if (stored.tail.length === 0) initialEffects = init.effects;
    }
    for (const row of stored.tail) {
      if (row.seq !== seq + 1) throw new PermanentActorError(`${address}: journal has a gap after seq ${seq} (next is ${row.seq})`);
      snapshot = this.stepper.step(snapshot, row.event).snapshot;
      seq = row.seq;
    }
    return { snapshot, seq, snapSeq: stored.snapshot?.seq ?? 0, initialEffects };
  }
}
