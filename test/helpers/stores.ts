import { afterAll, beforeAll } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import postgres from "postgres";
import { applySchema } from "../../src/store/schema.ts";
import { openStore, type Store, type StoreConfig } from "../../src/store/store.ts";

/**
 * The databases every store test runs on: embedded PGlite always, and a real PostgreSQL
 * server too when TEST_DATABASE_URL is set (CI sets it). Each TestDb is a fresh, empty
 * database (a temp directory, or a schema of its own on the server) that can be opened,
 * closed and opened again, as a restarted process would.
 */
export interface TestDb {
  flavor: "pglite" | "postgres";
  config: StoreConfig;
  /** Opens the database with the schema applied. */
  open(): Promise<Store>;
  destroy(): Promise<void>;
}

export const FLAVORS: Array<"pglite" | "postgres"> = process.env.TEST_DATABASE_URL ? ["pglite", "postgres"] : ["pglite"];

/**
 * One database for a whole describe: created and opened before its first test (the store is
 * handed to `set`), closed and destroyed after its last.
 */
export function useSharedStore(flavor: TestDb["flavor"], set: (store: Store) => void): void {
  let db: TestDb | undefined;
  let store: Store | undefined;
  beforeAll(async () => {
    db = await createTestDb(flavor);
    store = await db.open();
    set(store);
  }, 60_000);
  afterAll(async () => {
    await store?.close();
    await db?.destroy();
  });
}

export async function createTestDb(flavor: "pglite" | "postgres"): Promise<TestDb> {
  if (flavor === "pglite") {
    const dataDir = mkdtempSync(join(tmpdir(), "tether-test-"));
    const config: StoreConfig = { dataDir };
    return {
      flavor,
      config,
      open: () => openApplied(config),
      destroy: async () => rmSync(dataDir, { recursive: true, force: true }),
    };
  }
  const url = process.env.TEST_DATABASE_URL!;
  const schema = `test_${crypto.randomUUID().replaceAll("-", "").slice(0, 16)}`;
  const admin = postgres(url, { max: 1, onnotice: () => {} });
  await admin.unsafe(`create schema ${schema}`);
  const config: StoreConfig = { dataDir: "", databaseUrl: url, searchPath: schema };
  return {
    flavor,
    config,
    open: () => openApplied(config),
    destroy: async () => {
      await admin.unsafe(`drop schema ${schema} cascade`);
      await admin.end();
    },
  };
}

async function openApplied(config: StoreConfig): Promise<Store> {
  const store = await openStore(config);
  await applySchema(store);
  return store;
}

/** Waits until `check` returns true, or fails after `timeoutMs`. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 5_000, what = "condition"): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await Bun.sleep(10);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
