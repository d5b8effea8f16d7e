import { mkdirSync } from "node:fs";
import { PGlite, types } from "@electric-sql/pglite";
import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";
import type { Queryable, Store } from "./store.ts";

/** Embedded Postgres in a data directory: what a new user gets with nothing installed. */
export async function openPglite(dataDir: string): Promise<Store> {
  mkdirSync(dataDir, { recursive: true });
  // int8 as a JS number, as on the postgres.js side: sequence numbers and ms times fit in 2^53.
  const db = await PGlite.create(dataDir, { parsers: { [types.INT8]: (v: string) => Number(v) }, extensions: { pg_trgm } });
  const query = async <T>(q: Queryable | PGlite, sql: string, params?: readonly unknown[]) =>
    ((await (q as PGlite).query(sql, params as unknown[])).rows as T[]);
  return {
    flavor: "pglite",
    query: (sql, params) => query(db, sql, params),
    transaction: (fn) =>
      db.transaction((tx) => fn({ query: (sql, params) => query(tx as unknown as PGlite, sql, params) })),
    exec: async (script) => {
      await db.exec(script);
    },
    close: () => db.close(),
  };
}
