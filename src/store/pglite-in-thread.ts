import { mkdirSync } from "node:fs";
import { PGlite, types, type PGliteOptions } from "@electric-sql/pglite";
import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";
import type { Queryable, Store } from "./store.ts";

/**
 * Opens PGlite on the calling thread with Tether's options. The server runs it on a worker
 * thread (`pglite-worker.ts`, behind `openPglite`); this is that worker's way in, and the
 * in-thread baseline bench/store.ts compares it with.
 */
export async function createPglite(dataDir: string, extra: Pick<PGliteOptions, "pgliteWasmModule"> = {}): Promise<PGlite> {
  mkdirSync(dataDir, { recursive: true });
  return PGlite.create(dataDir, {
    ...extra,
    // int8 as a JS number, as on the postgres.js side: sequence numbers and ms times fit in 2^53.
    // bytea: PGlite's own serializer and parser convert byte by byte in JS (about 140 and 55 ms
    // per MiB here); these are native (under 1 ms per MiB).
    parsers: { [types.INT8]: (v: string) => Number(v), [types.BYTEA]: (v: string) => Uint8Array.fromHex(v.slice(2)) },
    serializers: {
      [types.BYTEA]: (x: unknown) => {
        if (!(x instanceof Uint8Array)) throw new Error("Invalid input for bytea type");
        return "\\x" + Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString("hex");
      },
    },
    extensions: { pg_trgm },
  });
}

/** PGlite on this thread behind the Store interface: bench/store.ts's baseline, not the server's. */
export async function openPgliteInThread(dataDir: string): Promise<Store> {
  const db = await createPglite(dataDir);
  const query = async <T>(q: Pick<PGlite, "query">, sql: string, params?: readonly unknown[]) =>
    (await q.query<T>(sql, params as unknown[])).rows;
  return {
    flavor: "pglite",
    query: (sql, params) => query(db, sql, params),
    transaction: (fn) => db.transaction((tx) => fn({ query: (sql, params) => query(tx, sql, params) } satisfies Queryable)),
    exec: async (script) => {
      await db.exec(script);
    },
    close: () => db.close(),
  };
}
