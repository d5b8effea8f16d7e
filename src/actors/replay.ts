import type { AnyMachineSnapshot, StateValue } from "xstate";
import type { Queryable } from "../store/store.ts";
import { Kind } from "./kind.ts";
import { loadHistory } from "./repository.ts";
import { parseAddress, type Effect, type KindDefinition, type PersistedState } from "./types.ts";

/**
 * Replay debugging (P7): an actor's history rebuilt from its journal through the same pure
 * logic the host runs. Nothing here writes; it works on either store. The CLI
 * (`npm run replay`) and the admin API are thin shells over these functions.
 */

export interface ContextChange {
  path: string;
  before?: unknown;
  after?: unknown;
}

export interface TimelineStep {
  seq: number;
  at: number;
  event: string;
  version: number;
  state: StateValue;
  changes: ContextChange[];
  effects: Effect[];
}

/** A journaled event the current logic throws on (what usually fails an actor): replay stops there. */
export interface ReplayFailure {
  seq: number;
  event: string;
  error: string;
}

export interface Timeline {
  address: string;
  version: number;
  /** Where replay started: 0 for the initial state, else the snapshot it started from. */
  from: number;
  steps: TimelineStep[];
  /** Set if replay stopped at an event the logic threw on; `steps` are those before it. */
  failed?: ReplayFailure;
}

export interface Verification {
  address: string;
  ok: boolean;
  from: number;
  checked: Array<{ seq: number; ok: boolean; diff?: ContextChange[] }>;
  skipped: Array<{ seq: number; reason: string }>;
  journalLength: number;
  /** Set if replay stopped at an event the logic threw on (then `ok` is false). */
  failed?: ReplayFailure;
}

export class ReplayError extends Error {}

const failureAt = (row: { seq: number; event: { type: string } }, err: unknown): ReplayFailure =>
  ({ seq: row.seq, event: row.event.type, error: (err as Error)?.message ?? String(err) });

function kindFor(defs: KindDefinition[], address: string): { kind: Kind; id: string } {
  const { kind: name, id } = parseAddress(address);
  const def = defs.find((d) => d.kind === name);
  if (!def) throw new ReplayError(`no logic is registered for kind ${JSON.stringify(name)}`);
  return { kind: new Kind(def), id };
}

/** The starting point: the initial state when the journal is complete from seq 1, else the earliest snapshot. */
async function start(db: Queryable, defs: KindDefinition[], address: string) {
  const { kind, id } = kindFor(defs, address);
  const history = await loadHistory(db, kind.name, id);
  if (history.journal.length === 0 && history.snapshots.length === 0) throw new ReplayError(`${address} has no journal and no snapshot`);
  let snapshot: AnyMachineSnapshot;
  let from = 0;
  let initialEffects: Effect[] = [];
  if (history.journal[0]?.seq === 1) {
    const init = kind.initial(id);
    snapshot = init.snapshot;
    initialEffects = init.effects;
  } else {
    const first = history.snapshots[0];
    if (!first) throw new ReplayError(`${address}: the journal does not start at 1 and there is no snapshot to start from`);
    snapshot = kind.stepper.restore(kind.migrate(first.state, first.version, address));
    from = first.seq;
  }
  return { kind, history, snapshot, from, initialEffects };
}

export async function timeline(db: Queryable, defs: KindDefinition[], address: string, opts: { from?: number; to?: number } = {}): Promise<Timeline> {
  const { kind, history, from, initialEffects, ...rest } = await start(db, defs, address);
  let snapshot = rest.snapshot;
  let pendingInitial: Effect[] | null = initialEffects.length ? initialEffects : null;
  const steps: TimelineStep[] = [];
  for (const row of history.journal) {
    if (row.seq <= from) continue;
    if (opts.to !== undefined && row.seq > opts.to) break;
    const before = snapshot.context;
    let next;
    try {
      next = kind.stepper.step(snapshot, row.event);
    } catch (err) {
      return { address, version: kind.version, from, steps, failed: failureAt(row, err) };
    }
    snapshot = next.snapshot;
    const effects = pendingInitial ? [...pendingInitial, ...next.effects] : next.effects;
    pendingInitial = null;
    if (opts.from !== undefined && row.seq < opts.from) continue;
    steps.push({ seq: row.seq, at: row.at, event: row.event.type, version: row.version, state: snapshot.value, changes: diff(before, snapshot.context), effects });
  }
  return { address, version: kind.version, from, steps };
}

/** The actor's full persisted state just after journal entry `seq` (0: the initial state). */
export async function stateAt(db: Queryable, defs: KindDefinition[], address: string, seq: number): Promise<{ seq: number; state: PersistedState }> {
  const { kind, history, from, ...rest } = await start(db, defs, address);
  if (seq < from) throw new ReplayError(`${address}: history before seq ${from} is not available (earliest snapshot)`);
  let snapshot = rest.snapshot;
  let reached = from;
  for (const row of history.journal) {
    if (row.seq <= from) continue;
    if (row.seq > seq) break;
    try {
      snapshot = kind.stepper.step(snapshot, row.event).snapshot;
    } catch (err) {
      const f = failureAt(row, err);
      throw new ReplayError(`${address}: the logic throws on journal entry ${f.seq} (${f.event}): ${f.error}`);
    }
    reached = row.seq;
  }
  if (reached !== seq) throw new ReplayError(`${address}: the journal ends at seq ${reached}`);
  return { seq, state: kind.stepper.persist(snapshot) };
}

/**
 * Replays the whole journal from the earliest point and checks that every stored snapshot of
 * the running version is reproduced exactly (compared as canonical JSON: jsonb reorders keys).
 */
export async function verify(db: Queryable, defs: KindDefinition[], address: string): Promise<Verification> {
  const { kind, history, from, ...rest } = await start(db, defs, address);
  let snapshot = rest.snapshot;
  const bySeq = new Map(history.snapshots.map((s) => [s.seq, s]));
  const checked: Verification["checked"] = [];
  const skipped: Verification["skipped"] = [];
  const check = (seq: number) => {
    const stored = bySeq.get(seq);
    if (!stored || seq === from) return;
    if (stored.version !== kind.version) {
      skipped.push({ seq, reason: `snapshot is version ${stored.version}, logic is version ${kind.version}` });
      return;
    }
    const replayed = kind.stepper.persist(snapshot);
    const same = canonical(replayed) === canonical(stored.state);
    checked.push(same ? { seq, ok: true } : { seq, ok: false, diff: diff(stored.state, replayed) });
  };
  let failed: ReplayFailure | undefined;
  for (const row of history.journal) {
    if (row.seq <= from) continue;
    try {
      snapshot = kind.stepper.step(snapshot, row.event).snapshot;
    } catch (err) {
      failed = failureAt(row, err);
      break;
    }
    check(row.seq);
  }
  const journalSeqs = new Set(history.journal.map((r) => r.seq));
  for (const s of history.snapshots) {
    if (s.seq <= from) continue;
    if (failed && s.seq >= failed.seq) skipped.push({ seq: s.seq, reason: `replay stopped at seq ${failed.seq}` });
    else if (!journalSeqs.has(s.seq)) skipped.push({ seq: s.seq, reason: "no journal entry at this seq" });
  }
  const v: Verification = { address, ok: !failed && checked.every((c) => c.ok), from, checked, skipped, journalLength: history.journal.length };
  if (failed) v.failed = failed;
  return v;
}

/** JSON with object keys sorted, so equal values compare equal whatever their key order. */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (_k, v) =>
    v && typeof v === "object" && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v);
}

/** Leaf-level differences between two JSON values, as dotted paths. */
export function diff(before: unknown, after: unknown, path = ""): ContextChange[] {
  if (canonical(before) === canonical(after)) return [];
  const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);
  if (isObj(before) && isObj(after)) {
    const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
    return keys.flatMap((k) => diff(before[k], after[k], path ? `${path}.${k}` : k));
  }
  const change: ContextChange = { path: path || "(root)" };
  if (before !== undefined) change.before = before;
  if (after !== undefined) change.after = after;
  return [change];
}
