import postgres from "postgres";
import type { Queryable, Store } from "./store.ts";

/** A real PostgreSQL server through postgres.js: what production runs on. */
export async function openPostgres(url: string, searchPath?: string): Promise<Store> {
  const sql = postgres(url, {
    max: 10,
    onnotice: () => {},
    // int8 as a JS number: sequence numbers and millisecond times stay well below 2^53.
    types: { bigint: { to: 20, from: [20], serialize: (v: number) => String(v), parse: (v: string) => Number(v) } },
    connection: searchPath ? { search_path: searchPath } : {},
  });
  const on = (q: postgres.Sql | postgres.TransactionSql): Queryable => ({
    query: async <T>(text: string, params?: readonly unknown[]) =>
      (await q.unsafe(text, (params ?? []) as postgres.ParameterOrJSON<never>[], { prepare: true })) as unknown as T[],
  });
  await sql`select 1`;
  return {
    flavor: "postgres",
    ...on(sql),
    transaction: (fn) => sql.begin((tx) => fn(on(tx))) as Promise<never>,
    exec: async (script) => {
      await sql.unsafe(script);
    },
    close: () => sql.end({ timeout: 5 }),
  };
}
