import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { applySchema, parseSchema } from "../../src/store/schema.ts";
import { openStore, type Store } from "../../src/store/store.ts";
import { useDb } from "../fixtures/harness.ts";
import { createTestDb, FLAVORS } from "../helpers/stores.ts";

const SCHEMA = readFileSync(join(import.meta.dir, "..", "..", "schema.sql"), "utf8");

describe("parseSchema", () => {
  test("splits the file into numbered sections with checksums", () => {
    const sections = parseSchema(SCHEMA);
    expect(sections.length).toBeGreaterThanOrEqual(1);
    expect(sections.map((s) => s.version)).toEqual(sections.map((_, i) => i + 1));
    expect(sections[0]!.sql).toContain("create table actor_journal");
    for (const s of sections) expect(s.checksum).toMatch(/^[0-9a-f]{64}$/);
  });

  test("refuses sections that do not count up from 1", () => {
    expect(() => parseSchema("-- version: 2\ncreate table a (x int);\n")).toThrow("expected version 1, found 2");
    expect(() => parseSchema("-- version: 1\nselect 1;\n-- version: 3\nselect 1;\n")).toThrow("expected version 2, found 3");
  });

  test("a section's checksum changes with any edit, comments included", () => {
    const [a] = parseSchema("-- version: 1\ncreate table a (x int);\n");
    const [b] = parseSchema("-- version: 1\n-- a note\ncreate table a (x int);\n");
    const [c] = parseSchema("-- version: 1\ncreate table a (x int);\n\n\n");
    expect(a!.checksum).not.toBe(b!.checksum);
    expect(a!.checksum).toBe(c!.checksum); // surrounding whitespace is not part of it
  });
});

for (const flavor of FLAVORS) {
  describe(`applySchema [${flavor}]`, () => {
    const ctx = useDb(flavor, { schema: false });
    /** A connection to the (empty) test database, as a starting process has. */
    const connect = () => ctx.open();
    const exists = async (store: Store, table: string) =>
      (await store.query<{ t: string | null }>("select to_regclass($1)::text as t", [table]))[0]!.t !== null;
    const versions = async (store: Store) =>
      store.query<{ version: number; checksum: string }>("select version, checksum from schema_migrations order by version");
    const current = parseSchema(SCHEMA);

    test("starts from an empty database", async () => {
      const store = await connect();
      expect(await exists(store, "actor_journal")).toBe(false);
      expect(await exists(store, "schema_migrations")).toBe(false);
    });

    test("creates the runtime tables and records every version with its checksum", async () => {
      const store = await connect();
      expect(await applySchema(store)).toBe(current.length);
      for (const t of ["actor_journal", "actor_snapshots", "actor_timers", "actors"]) expect(await exists(store, t)).toBe(true);
      expect(await versions(store)).toEqual(current.map((m) => ({ version: m.version, checksum: m.checksum })));
    });

    test("is idempotent: applying again changes nothing and keeps the data", async () => {
      const store = await connect();
      await applySchema(store);
      await store.query("insert into actor_journal (kind, actor_id, seq, version, at, event) values ('k', 'a', 1, 1, 5, '{}')");
      const before = await store.query("select version, checksum, applied_at from schema_migrations order by version");
      expect(await applySchema(store)).toBe(current.length);
      expect(await applySchema(store)).toBe(current.length);
      expect(await store.query("select version, checksum, applied_at from schema_migrations order by version")).toEqual(before);
      expect(await store.query("select actor_id, seq from actor_journal")).toEqual([{ actor_id: "a", seq: 1 }]);
    });

    test("applies an appended section once, and the database stays at the newest version", async () => {
      const store = await connect();
      await applySchema(store);
      const next = current.length + 1;
      const extended = `${SCHEMA}\n-- version: ${next}\ncreate table extra_things (x int);\ninsert into extra_things values (1);\n`;
      expect(await applySchema(store, extended)).toBe(next);
      expect(await applySchema(store, extended)).toBe(next);
      expect(await store.query("select x from extra_things")).toEqual([{ x: 1 }]); // inserted once
      expect((await versions(store)).map((v) => v.version)).toEqual(Array.from({ length: next }, (_, i) => i + 1));
      // A process with the older file still starts: it only checks what it knows.
      expect(await applySchema(store)).toBe(next);
    });

    test("refuses a section edited after it was applied, and changes nothing", async () => {
      const store = await connect();
      await applySchema(store);
      const edited = SCHEMA.replace("create table actor_timers (", "-- an innocent-looking note\ncreate table actor_timers (");
      expect(edited).not.toBe(SCHEMA);
      const withNew = `${edited}\n-- version: ${current.length + 1}\ncreate table never_created (x int);\n`;
      expect(applySchema(store, withNew)).rejects.toThrow("schema.sql version 1 was edited after it was applied; append a new version instead");
      await applySchema(store, withNew).catch(() => {});
      expect(await exists(store, "never_created")).toBe(false);
      expect(await versions(store)).toEqual(current.map((m) => ({ version: m.version, checksum: m.checksum })));
    });

    test("a section that fails is rolled back whole and not recorded", async () => {
      const store = await connect();
      await applySchema(store);
      const next = current.length + 1;
      const broken = `${SCHEMA}\n-- version: ${next}\ncreate table half_done (x int);\ncreate table half_done (x int);\n`;
      await expect(applySchema(store, broken)).rejects.toThrow();
      expect(await exists(store, "half_done")).toBe(false);
      expect((await versions(store)).map((v) => v.version)).not.toContain(next);
      const fixed = `${SCHEMA}\n-- version: ${next}\ncreate table half_done (x int);\n`;
      expect(await applySchema(store, fixed)).toBe(next);
      expect(await exists(store, "half_done")).toBe(true);
    });

    test("v16 moves each machine's status and last seen into machine_presence, and new machines get a row", async () => {
      const store = await connect();
      const v15 = SCHEMA.slice(0, SCHEMA.indexOf("-- version: 16"));
      expect(await applySchema(store, v15)).toBe(15);
      const tenant = (await store.query<{ id: string }>("select id from tenants limit 1"))[0]!.id;
      const [online, offline] = [crypto.randomUUID(), crypto.randomUUID()];
      await store.query(
        `insert into machines (id, tenant_id, machine_uid, hostname, public_key, status, last_seen_at, deleted_at)
         values ($1, $3, 'uid-a', 'A', 'pk', 'online', '2026-01-02T03:04:05Z', null), ($2, $3, 'uid-b', 'B', 'pk', 'offline', null, now())`,
        [online, offline, tenant]);
      expect(await applySchema(store)).toBe(current.length);
      const rows = await store.query<{ machine_id: string; status: string; seen: string | null }>(
        "select machine_id, status, to_char(last_seen_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as seen from machine_presence order by status desc");
      expect(rows).toEqual([{ machine_id: online, status: "online", seen: "2026-01-02 03:04:05" }, { machine_id: offline, status: "offline", seen: null }]);
      expect(await store.query("select column_name from information_schema.columns where table_name = 'machines' and column_name in ('status', 'last_seen_at') and table_schema = current_schema()")).toEqual([]);
      const added = crypto.randomUUID();
      await store.query("insert into machines (id, tenant_id, machine_uid, hostname, public_key) values ($1, $2, 'uid-c', 'C', 'pk')", [added, tenant]);
      expect(await store.query("select status, last_seen_at from machine_presence where machine_id = $1", [added])).toEqual([{ status: "offline", last_seen_at: null }]);
    });

    test("v17 takes back the grants of machines removed before it, and keeps the others", async () => {
      const store = await connect();
      expect(await applySchema(store, SCHEMA.slice(0, SCHEMA.indexOf("-- version: 17")))).toBe(16);
      const tenant = (await store.query<{ id: string }>("select id from tenants limit 1"))[0]!.id;
      const [live, removed, user] = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
      await store.query(
        `insert into machines (id, tenant_id, machine_uid, hostname, public_key, deleted_at)
         values ($1, $3, 'uid-live', 'LIVE', 'pk', null), ($2, $3, 'uid-removed', 'GONE', 'pk', now())`,
        [live, removed, tenant]);
      await store.query("insert into users (id, tenant_id, username, display_name, password_hash, role) values ($1, $2, 'eu-v17', 'EU', 'x', 'end_user')", [user, tenant]);
      await store.query("insert into user_machine_grants (tenant_id, user_id, machine_id) values ($1, $2, $3), ($1, $2, $4)", [tenant, user, live, removed]);
      expect(await applySchema(store)).toBe(current.length);
      expect(await store.query("select machine_id from user_machine_grants where user_id = $1", [user])).toEqual([{ machine_id: live }]);
    });

    test("search documents: the inlined tether_json_strings gives what the query form gives (v11)", async () => {
      const store = await connect();
      await applySchema(store);
      const long = (n: number) => JSON.stringify(Array.from({ length: n }, (_, i) => `e${i}`));
      const cases = [null, '"x"', "{}", "[]", '["a"]', '["a","b"]', '["a",null,"b"]', '[null]', '[1,true,{"k":"v"},["n"]]',
        long(7), long(8), long(9), long(40), JSON.stringify(["DOMAIN\\user", 'q"uote', "ünï", ""])];
      for (const c of cases) {
        const [row] = await store.query<{ fast: string; all: string }>(
          "select tether_json_strings($1::text::jsonb) as fast, tether_json_strings_all($1::text::jsonb) as all", [c]);
        expect({ c, text: row!.fast }).toEqual({ c, text: row!.all });
      }
      // And it is inlined (no executor per call): a presence UPDATE's cost depended on it.
      const plan = await store.query<Record<string, string>>("explain (verbose) select tether_json_strings(x) from (values ('[\"a\"]'::jsonb), ('[]'::jsonb)) as v(x)");
      const text = plan.map((r) => Object.values(r)[0]).join("\n");
      expect(text).toContain("jsonb_typeof");
      expect(text).not.toContain("tether_json_strings(");
    });

    test("processes starting together on an empty database both succeed and apply it once", async () => {
      // PGlite is single-process: two concurrent starts share its one connection. On
      // PostgreSQL they are two connection pools, as two processes (a primary and a standby)
      // are; a race is a matter of timing, so it is run on a few fresh databases.
      const rounds = flavor === "postgres" ? 5 : 1;
      for (let round = 0; round < rounds; round++) {
        const db = round === 0 ? ctx.db : await createTestDb(flavor);
        const stores: Store[] = [];
        try {
          const a = await openStore(db.config);
          stores.push(a);
          const b = flavor === "postgres" ? await openStore(db.config) : a;
          if (b !== a) stores.push(b);
          const results = await Promise.allSettled([applySchema(a), applySchema(b)]);
          expect(results.map((r) => (r.status === "fulfilled" ? r.value : String(r.reason)))).toEqual([current.length, current.length]);
          expect((await versions(a)).map((v) => v.version)).toEqual(current.map((m) => m.version));
        } finally {
          for (const s of stores) await s.close();
          if (db !== ctx.db) await db.destroy();
        }
      }
    });
  });
}
