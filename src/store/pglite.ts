import { fileURLToPath } from "node:url";
import { lockDataDir } from "./data-dir-lock.ts";
import type { Reply, Request, WireError } from "./pglite-worker.ts";
import type { Queryable, Store } from "./store.ts";

/**
 * Embedded Postgres in a data directory: what a new user gets with nothing installed.
 *
 * PGlite runs on a worker thread (pglite-worker.ts), so a statement's WebAssembly work (parse,
 * execute, WAL) does not hold up the relay, handshakes and timers on the server's thread. This
 * is the proxy: requests go out with an id, replies settle the matching promise; parameters and
 * rows cross by structured clone.
 */
export async function openPglite(dataDir: string): Promise<Store> {
  // Before anything touches the directory: a second process on it is refused (data-dir-lock.ts).
  const lock = lockDataDir(dataDir);
  let store: WorkerStore | undefined;
  let worker: BunWorker;
  try {
    const wasm = await compiledWasm();
    worker = new Worker(new URL("./pglite-worker.ts", import.meta.url)) as BunWorker;
    store = new WorkerStore(worker);
    await store.open(dataDir, wasm);
  } catch (err) {
    await store?.close().catch(() => {});
    lock.release();
    throw err;
  }
  const opened = store;
  // A plain object of functions, as the other stores are: callers (and tests) spread stores.
  const proxy: Store & { [WORKER]: Worker; [PROFILE]: () => Promise<StatementProfile[]> } = {
    flavor: "pglite",
    query: (sql, params) => opened.query(sql, params),
    transaction: (fn) => opened.transaction(fn),
    exec: (script) => opened.exec(script),
    close: () => opened.close().finally(() => lock.release()),
    [WORKER]: worker,
    [PROFILE]: () => opened.profile(),
  };
  return proxy;
}

const WORKER = Symbol("pglite worker");
const PROFILE = Symbol("pglite profile");
export interface StatementProfile {
  /** The statement's first words. */
  sql: string;
  n: number;
  /** Time on PGlite's thread, in ms. */
  ms: number;
}
/** The statements PGlite ran since the last call, with their own time (only with TETHER_PGLITE_PROFILE set in the environment; see pglite-worker.ts). */
export function pgliteProfile(store: Store): Promise<StatementProfile[]> {
  const profile = (store as { [PROFILE]?: () => Promise<StatementProfile[]> })[PROFILE];
  return profile ? profile() : Promise.resolve([]);
}
/** The worker behind a store opened by `openPglite` (tests end it to see a worker die). */
export function workerOf(store: Store): Worker | undefined {
  return (store as { [WORKER]?: Worker })[WORKER];
}

// Every worker would compile PGlite's 9 MB of WebAssembly again (a few hundred ms per open, and
// tests open hundreds of stores); a compiled module is shared between threads instead.
let wasmModule: Promise<WebAssembly.Module | undefined> | undefined;
function compiledWasm(): Promise<WebAssembly.Module | undefined> {
  wasmModule ??= (async () => {
    const path = fileURLToPath(import.meta.resolve("@electric-sql/pglite/pglite.wasm"));
    return WebAssembly.compile(await Bun.file(path).arrayBuffer());
  })().catch(() => undefined); // then each worker loads it the way PGlite does by itself
  return wasmModule;
}

/** Bun's Worker also has Node's ref/unref (the DOM typings, which win here, do not). */
type BunWorker = Worker & { ref(): void; unref(): void };
type Pending = { resolve: (rows: unknown) => void; reject: (err: WireError) => void };

class WorkerStore implements Omit<Store, "flavor"> {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  /** Why every call now fails at once (the worker is gone); null while it runs. */
  private dead: WireError | null = null;
  /** Top-level calls (query, exec, transaction) under way, which close() waits for. */
  private active = 0;
  private idle: (() => void) | null = null;
  private closing: Promise<void> | null = null;
  private inbox: Array<Exclude<Reply, { fatal: string }>> = [];
  private backup: ReturnType<typeof setTimeout> | null = null;

  constructor(readonly worker: BunWorker) {
    // The worker keeps the process alive only while a request is waiting for it (see send), so
    // neither a store nobody closed nor a closed one keeps a process or the test runner alive.
    worker.unref();
    worker.onmessage = (event: MessageEvent<Reply>) => {
      const r = event.data;
      if ("fatal" in r) return this.die(`PGlite's worker thread failed: ${r.fatal}`);
      // Replies are settled in a task of their own, not in this message's dispatch: Bun (1.4)
      // loses the wakeup of a worker's next message while code that continues from the
      // dispatch waits in a nested event loop, which bun:test's `expect(p).rejects` does, so
      // that test would hang (oven-sh/bun#37189). An immediate comes first; nested loops run
      // only timers promptly, so a 1 ms timer backs it up (a no-op when the immediate ran).
      if (this.inbox.push(r) > 1) return;
      setImmediate(this.deliver);
      this.backup ??= setTimeout(() => {
        this.backup = null;
        this.deliver();
      }, 1).unref();
    };
    worker.onerror = (event) => {
      event.preventDefault(); // reported through the failed calls, not as an uncaught error
      this.die(`PGlite's worker thread died: ${event.message}`);
    };
    worker.onmessageerror = () => this.die("PGlite's worker thread sent a reply that could not be read");
    worker.addEventListener("close", () => this.die("PGlite's worker thread exited"));
  }

  async open(dataDir: string, wasm: WebAssembly.Module | undefined): Promise<void> {
    try {
      await this.send({ id: this.nextId++, op: "open", dataDir, wasm });
    } catch (err) {
      throw toError(err);
    }
  }

  async query<T = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<T[]> {
    this.enter();
    try {
      return (await this.send({ id: this.nextId++, op: "query", sql, params })) as T[];
    } catch (err) {
      throw toError(err); // created here, after the await: its stack shows the caller's chain
    } finally {
      this.leave();
    }
  }

  async profile(): Promise<StatementProfile[]> {
    return (await this.send({ id: this.nextId++, op: "profile" })) as StatementProfile[];
  }

  async exec(script: string): Promise<void> {
    this.enter();
    try {
      await this.send({ id: this.nextId++, op: "exec", script });
    } catch (err) {
      throw toError(err);
    } finally {
      this.leave();
    }
  }

  /**
   * `fn` starts once BEGIN has run in the worker (as with PGlite on one thread: a transaction
   * waits for the one before it, and a group commit takes what queued meanwhile), and its
   * statements run there in order. Then COMMIT, or ROLLBACK and fn's own error.
   */
  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    this.enter();
    try {
      const txId = this.nextId++;
      try {
        await this.send({ id: txId, op: "begin" });
      } catch (err) {
        throw toError(err);
      }
      let open = true;
      const tx: Queryable = {
        query: async <R>(sql: string, params?: readonly unknown[]) => {
          if (!open) throw new Error("Transaction is closed");
          try {
            return (await this.send({ id: this.nextId++, op: "query", sql, params, tx: txId })) as R[];
          } catch (err) {
            throw toError(err);
          }
        },
      };
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        open = false;
        // Whatever the rollback says (even that the worker is gone), fn's error is the answer.
        await this.send({ id: this.nextId++, op: "end", tx: txId, commit: false }).catch(() => {});
        throw err;
      }
      open = false;
      try {
        await this.send({ id: this.nextId++, op: "end", tx: txId, commit: true });
      } catch (err) {
        throw toError(err);
      }
      return result;
    } finally {
      this.leave();
    }
  }

  /** Waits for the calls under way, closes PGlite (its data directory cleanly) and ends the worker. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.active > 0) await new Promise<void>((resolve) => (this.idle = resolve));
      let failure: unknown = null;
      if (!this.dead) await this.send({ id: this.nextId++, op: "close" }).catch((err) => (failure = err));
      this.die("PGlite is closed");
      if (failure) throw toError(failure);
    })();
    return this.closing;
  }

  private readonly deliver = () => {
    const replies = this.inbox;
    if (replies.length === 0) return;
    this.inbox = [];
    for (const r of replies) {
      const p = this.pending.get(r.id);
      if (!p) continue;
      this.pending.delete(r.id);
      if ("error" in r) p.reject(r.error);
      else p.resolve(r.rows);
    }
    if (this.pending.size === 0) this.worker.unref();
  };

  private enter(): void {
    if (this.closing) throw new Error("PGlite is closed");
    this.active++;
  }

  private leave(): void {
    if (--this.active === 0 && this.idle) this.idle();
  }

  private send(msg: Request): Promise<unknown> {
    if (this.dead) return Promise.reject(this.dead);
    return new Promise((resolve, reject) => {
      try {
        this.worker.postMessage(msg);
      } catch (err) {
        // Parameters that cannot be cloned (a function, say): this call fails, nothing else.
        return reject({ message: `cannot pass the parameters to PGlite's worker: ${(err as Error).message}`, fields: {} } satisfies WireError);
      }
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(msg.id, { resolve, reject });
    });
  }

  /** The worker is gone (or going): every call waiting fails now, and every later one at once. */
  private die(reason: string): void {
    if (this.dead) return;
    this.deliver(); // replies that came before the end settle as they are
    this.dead = { message: reason, fields: {} };
    const waiting = [...this.pending.values()];
    this.pending.clear();
    this.worker.unref();
    this.worker.terminate();
    for (const p of waiting) p.reject(this.dead);
  }
}

/** A reply's error as an Error of this thread, with PGlite's fields (code, detail, …) on it. */
function toError(err: unknown): Error {
  if (err instanceof Error) return err;
  const wire = err as WireError;
  return Object.assign(new Error(wire.message), wire.fields);
}
