/**
 * The worker thread that owns PGlite (started by `openPglite` in pglite.ts). Every request
 * carries an id and gets exactly one reply with that id. PGlite runs here exactly as it would
 * on the server's thread: plain queries, `exec` and transactions go through its own mutexes in
 * the order the messages arrive, so a plain query that arrives while a transaction is open
 * waits for it, as on one thread.
 */
import type { PGlite, Transaction } from "@electric-sql/pglite";
import { createPglite } from "./pglite-in-thread.ts";

export type Request =
  | { id: number; op: "open"; dataDir: string; wasm?: WebAssembly.Module }
  | { id: number; op: "query"; sql: string; params?: readonly unknown[]; tx?: number }
  | { id: number; op: "exec"; script: string }
  /** Opens a transaction whose id is this request's id; replied to once BEGIN has run. */
  | { id: number; op: "begin" }
  /** Ends transaction `tx`; replied to once COMMIT (or ROLLBACK) has run. */
  | { id: number; op: "end"; tx: number; commit: boolean }
  /** The statement profile since the last one (empty unless TETHER_PGLITE_PROFILE is set), then reset. */
  | { id: number; op: "profile" }
  | { id: number; op: "close" };

/** An error as it crosses: structured clone would keep only the message of an Error. */
export interface WireError {
  message: string;
  /** PGlite's error fields (code, detail, constraint, …): own properties with primitive values. */
  fields: Record<string, string | number | boolean | null>;
}

export type Reply =
  | { id: number; rows?: unknown[] }
  | { id: number; error: WireError }
  /** PGlite itself failed (a WebAssembly abort): the proxy fails everything and ends the worker. */
  | { fatal: string };

declare const self: Worker;

let db: PGlite | undefined;
interface OpenTx {
  tx: Transaction;
  end: (commit: boolean, endId: number) => void;
}
const txs = new Map<number, OpenTx>();
/** Thrown inside the transaction callback to make PGlite roll back; never leaves the worker. */
const ROLLBACK = Symbol("rollback");

/**
 * TETHER_PGLITE_PROFILE: each statement's own time on this thread, summed by its first words.
 * PGlite runs one statement at a time in the order called, so a statement's own time runs from
 * its call, or the end of the one before if later, to its end. A diagnostic (bench/agents.ts
 * reads it with BENCH_PROFILE); off, it costs one branch per statement.
 */
const profiling = Boolean(process.env.TETHER_PGLITE_PROFILE);
let profile = new Map<string, { n: number; ms: number }>();
let lastDone = 0;
function profiled<T>(sql: string, running: Promise<T>): Promise<T> {
  if (!profiling) return running;
  const called = performance.now();
  const count = () => {
    const done = performance.now();
    const key = sql.replace(/\s+/g, " ").trim().slice(0, 60);
    const entry = profile.get(key) ?? { n: 0, ms: 0 };
    entry.n++;
    entry.ms += done - Math.max(called, lastDone);
    lastDone = done;
    profile.set(key, entry);
  };
  running.then(count, count);
  return running;
}

function reply(msg: Reply): void {
  try {
    self.postMessage(msg);
  } catch (err) {
    // Rows that cannot be cloned (none of Postgres's types should do this) fail their request only.
    if ("rows" in msg) self.postMessage({ id: msg.id, error: toWire(err) } satisfies Reply);
    else throw err;
  }
}
const ok = (id: number) => (result?: { rows: unknown[] }) => reply({ id, rows: result?.rows });
const fail = (id: number) => (err: unknown) => {
  reply({ id, error: toWire(err) });
  // After an abort PGlite's memory is in an unknown state: no further request may run on it.
  if (err instanceof WebAssembly.RuntimeError || (err as { name?: unknown })?.name === "ExitStatus")
    reply({ fatal: `PGlite aborted: ${(err as Error).message}` });
};

function toWire(err: unknown): WireError {
  if (!(err instanceof Error)) return { message: String(err), fields: {} };
  const fields: WireError["fields"] = {};
  for (const [k, v] of Object.entries(err)) {
    if (k === "stack" || k === "message") continue;
    if (v === null || ["string", "number", "boolean"].includes(typeof v)) fields[k] = v as string | number | boolean | null;
  }
  return { message: err.message, fields };
}

self.onmessage = (event: MessageEvent<Request>) => {
  const m = event.data;
  if (m.op === "open") {
    createPglite(m.dataDir, m.wasm ? { pgliteWasmModule: m.wasm } : {}).then((opened) => {
      db = opened;
      reply({ id: m.id });
    }, fail(m.id));
    return;
  }
  if (!db) return fail(m.id)(new Error("PGlite is not open"));
  switch (m.op) {
    case "query": {
      if (m.tx === undefined) profiled(m.sql, db.query(m.sql, m.params as unknown[])).then(ok(m.id), fail(m.id));
      else {
        const open = txs.get(m.tx);
        if (!open) fail(m.id)(new Error("Transaction is closed"));
        // Not awaited: PGlite's query mutex keeps the transaction's statements in arrival order.
        else profiled(m.sql, open.tx.query(m.sql, m.params as unknown[])).then(ok(m.id), fail(m.id));
      }
      return;
    }
    case "exec":
      db.exec(m.script).then(() => reply({ id: m.id }), fail(m.id));
      return;
    case "begin": {
      let begun = false;
      let endId = -1;
      db.transaction(async (tx) => {
        // Served until the proxy's function settles: `end` resolves this with commit or not.
        const commit = await new Promise<boolean>((resolve) => {
          txs.set(m.id, { tx, end: (c, id) => ((endId = id), resolve(c)) });
          begun = true;
          reply({ id: m.id });
        });
        if (!commit) throw ROLLBACK;
      }).then(
        () => reply({ id: endId }),
        (err) => {
          txs.delete(m.id);
          // Before the callback ran (BEGIN failed) the begin request fails; after, the end.
          if (!begun) fail(m.id)(err);
          else if (err === ROLLBACK) reply({ id: endId });
          else fail(endId)(err);
        },
      );
      return;
    }
    case "end": {
      const open = txs.get(m.tx);
      txs.delete(m.tx);
      if (open) open.end(m.commit, m.id);
      else fail(m.id)(new Error("Transaction is closed"));
      return;
    }
    case "profile":
      reply({ id: m.id, rows: [...profile].map(([sql, e]) => ({ sql, n: e.n, ms: e.ms })) });
      profile = new Map();
      return;
    case "close":
      db.close().then(() => reply({ id: m.id }), fail(m.id));
      return;
  }
};
