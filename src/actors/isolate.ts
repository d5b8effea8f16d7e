import type { Write } from "./journal.ts";

/** One append, as isolation sees it: its writes, and the actors (`kind/id`) they belong to. */
export interface Candidate {
  writes: Write[];
  actors: string[];
}

/** Statements isolation may spend on a batch of n appends: a few dozen per refused append. */
export const isolationBudget = (n: number) => 16 * Math.ceil(Math.log2(n + 1)) + 16;

/** Only status rows: no sequence number, so a refused actor's still go in (as queued ones do). */
export const statusOnly = (writes: readonly Write[]) => writes.every((w) => w.op === "status");

/** Per candidate: null once committed, the error that kept it out, or undefined if never decided. */
export type Outcome = Error | null | undefined;

/**
 * The database refused `candidates` (`refusal`, a data error) in one statement: commits them
 * again in halves, in order, down to the single appends it refuses, and records each one's
 * outcome in `outcomes` (index for index).
 *
 * An append of an actor that already failed is not tried, since its sequence numbers would
 * leave a gap: it fails with that actor's error (one of status rows only is still tried). One
 * bad append among 4,000 costs about 25 statements, eight about 200; a refusal of everything (a
 * bad migration, say) would cost 2n, so the statements are capped at `budget` and beyond it
 * `refusal` is thrown with the rest undecided. Any error that is not about the data
 * (`isDataError`) is thrown the same way.
 */
export async function isolate(
  candidates: Candidate[],
  refusal: Error,
  commit: (writes: Write[]) => Promise<void>,
  outcomes: Outcome[],
  budget = isolationBudget(candidates.length),
): Promise<void> {
  const failedActors = new Map<string, Error>();
  let statements = 0;

  const refuse = (i: number, err: Error) => {
    outcomes[i] = err;
    for (const a of candidates[i]!.actors) if (!failedActors.has(a)) failedActors.set(a, err);
  };
  const split = async (indexes: number[], err: Error): Promise<void> => {
    if (indexes.length === 1) return refuse(indexes[0]!, err);
    const half = indexes.length >> 1;
    await attempt(indexes.slice(0, half));
    await attempt(indexes.slice(half));
  };
  const attempt = async (indexes: number[]): Promise<void> => {
    const tried: number[] = [];
    for (const i of indexes) {
      const earlier = statusOnly(candidates[i]!.writes) ? undefined : firstFailure(candidates[i]!.actors, failedActors);
      if (earlier) refuse(i, earlier);
      else tried.push(i);
    }
    if (tried.length === 0) return;
    if (++statements > budget) throw refusal;
    try {
      await commit(tried.flatMap((i) => candidates[i]!.writes));
    } catch (err) {
      if (!isDataError(err)) throw err;
      return split(tried, err as Error);
    }
    for (const i of tried) outcomes[i] = null;
  };
  await split(candidates.map((_, i) => i), refusal);
}

function firstFailure(actors: string[], failedActors: Map<string, Error>): Error | undefined {
  if (failedActors.size === 0) return undefined;
  for (const a of actors) {
    const err = failedActors.get(a);
    if (err) return err;
  }
  return undefined;
}

/** The actors (`kind/id`) that `writes` belong to. */
export function actorsOf(writes: readonly Write[]): string[] {
  const actors = new Set<string>();
  for (const w of writes) actors.add(`${w.kind}/${w.actor_id}`);
  return [...actors];
}

/**
 * The database refused the data itself (SQLSTATE class 22, a data exception such as text it
 * cannot store; 23, a constraint; 54, a value over a limit): the same writes without the
 * offending append may well commit. Anything else (the connection, the lease, the disk, a
 * syntax error) would fail any batch.
 */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && /^(22|23|54)[0-9A-Z]{3}$/.test(code);
}
