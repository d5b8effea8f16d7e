import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Store } from "./store.ts";

export interface Migration {
  version: number;
  sql: string;
  checksum: string;
}

const SCHEMA_PATH = join(import.meta.dir, "..", "..", "schema.sql");
// Any constant works; it only has to be the same in every Tether process.
const SCHEMA_LOCK = 4_242_001;

/** Splits schema.sql into its `-- version: N` sections, which must count up from 1. */
export function parseSchema(text: string): Migration[] {
  const parts = text.split(/^-- version: (\d+)\s*$/m);
  const out: Migration[] = [];
  for (let i = 1; i < parts.length; i += 2) {
    const version = Number(parts[i]);
    const sql = (parts[i + 1] ?? "").trim();
    if (version !== out.length + 1) throw new Error(`schema.sql: expected version ${out.length + 1}, found ${version}`);
    out.push({ version, sql, checksum: createHash("sha256").update(sql).digest("hex") });
  }
  return out;
}

/**
 * Brings the database up to schema.sql. Idempotent and safe to race: every section runs under
 * a transaction-scoped advisory lock, so two processes starting together apply it once.
 * Returns the version the database is at afterwards.
 */
export async function applySchema(store: Store, text = readFileSync(SCHEMA_PATH, "utf8")): Promise<number> {
  const migrations = parseSchema(text);
  // Under the lock too: concurrent CREATE TABLE IF NOT EXISTS can still collide in Postgres.
  await store.transaction(async (tx) => {
    await tx.query("select pg_advisory_xact_lock($1)", [SCHEMA_LOCK]);
    await tx.query(`create table if not exists schema_migrations (
      version integer primary key, checksum text not null, applied_at timestamptz not null default now())`);
  });
  for (const m of migrations) {
    await store.transaction(async (tx) => {
      await tx.query("select pg_advisory_xact_lock($1)", [SCHEMA_LOCK]);
      const [row] = await tx.query<{ checksum: string }>(
        "select checksum from schema_migrations where version = $1", [m.version]);
      if (row) {
        if (row.checksum !== m.checksum)
          throw new Error(`schema.sql version ${m.version} was edited after it was applied; append a new version instead`);
        return;
      }
      for (const statement of splitStatements(m.sql)) await tx.query(statement);
      await tx.query("insert into schema_migrations (version, checksum) values ($1, $2)", [m.version, m.checksum]);
    });
  }
  const [latest] = await store.query<{ v: number | null }>("select max(version) as v from schema_migrations");
  return Number(latest?.v ?? 0);
}

/** Statements split on `;` at line ends; schema.sql keeps to that (a function body has none at the end of a line). */
function splitStatements(sql: string): string[] {
  return sql
    .split(/;\s*$/m)
    .map((s) => s.replace(/^\s*--.*$/gm, "").trim())
    .filter(Boolean);
}
