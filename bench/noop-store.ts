import type { Queryable, Store } from "../src/store/store.ts";

/**
 * BENCHMARK BASELINE ONLY: a Store that stores nothing. Not a database, never for production.
 *
 * `transaction(fn)` runs `fn` against a transaction whose `query` resolves to no rows at once,
 * and `query` itself returns no rows. So the actor runtime still does all of its own per-event
 * work (mailbox, pure step, journal batching, encoding each batch to JSON, the output gate that
 * releases effects after "commit"), but no I/O happens. Loading an actor finds nothing, so every
 * actor starts fresh. Used by bench/actors.ts for the in-memory throughput and heap figures.
 */
export function openNoopStore(): Store {
  const noRows = async <T>(): Promise<T[]> => [];
  const tx: Queryable = { query: noRows };
  return {
    // Store["flavor"] knows only real databases; this one is neither, and nothing branches on it.
    flavor: "noop-benchmark-baseline" as string as Store["flavor"],
    query: noRows,
    transaction: (fn) => fn(tx),
    exec: async () => {},
    close: async () => {},
  };
}
