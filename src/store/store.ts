/**
 * The one small interface both databases hide behind. Everything above `src/store` speaks SQL
 * through it and never learns which Postgres it is talking to.
 */
export interface Queryable {
  /** Runs one parameterised statement and returns its rows. */
  query<T = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<T[]>;
}

export interface Store extends Queryable {
  readonly flavor: "pglite" | "postgres";
  /** Runs `fn` in one transaction: committed if it resolves, rolled back if it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Runs a script of several statements without parameters (used for the schema). */
  exec(script: string): Promise<void>;
  close(): Promise<void>;
}

export interface StoreConfig {
  /** A PostgreSQL server; when absent, embedded PGlite in `dataDir`. */
  databaseUrl?: string;
  dataDir: string;
  /** Postgres schema to work in (tests isolate themselves with one each). */
  searchPath?: string;
}

export async function openStore(config: StoreConfig): Promise<Store> {
  if (config.databaseUrl) {
    const { openPostgres } = await import("./postgres.ts");
    return openPostgres(config.databaseUrl, config.searchPath);
  }
  const { openPglite } = await import("./pglite.ts");
  return openPglite(config.dataDir);
}
