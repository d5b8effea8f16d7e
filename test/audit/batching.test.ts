import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { audit, flushAudit } from "../../src/audit/audit.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import type { Queryable, Store } from "../../src/store/store.ts";
import { createTestDb, FLAVORS, type TestDb } from "../helpers/stores.ts";

/** The audit log's group commit: fewer commits, and still every event lands, or fails alone. */
for (const flavor of FLAVORS) {
  describe(`audit group commit (${flavor})`, () => {
    let db: TestDb;
    let store: Store;
    let statements = 0;
    /** The store, counting its statements. */
    let counted: Store;
    const count = async (type: string) => Number((await store.query<{ n: number }>("select count(*)::int as n from audit_events where type = $1", [type]))[0]!.n);

    beforeAll(async () => {
      db = await createTestDb(flavor);
      store = await db.open();
      counted = Object.assign(Object.create(store), {
        query: (sql: string, params?: readonly unknown[]) => (statements++, store.query(sql, params)),
        transaction: store.transaction.bind(store),
      }) as Store;
    }, 60_000);
    afterAll(async () => {
      await store?.close();
      await db?.destroy();
    });

    test("a burst of events is written in a few statements, and each is committed when its audit() resolves", async () => {
      statements = 0;
      const type = `test.burst.${crypto.randomUUID()}`;
      await Promise.all(Array.from({ length: 300 }, (_, i) => audit(counted, { tenantId: DEFAULT_TENANT_ID, type, actor: { type: "agent", id: String(i) }, details: { i } })));
      expect(await count(type)).toBe(300);
      expect(statements).toBeLessThanOrEqual(3);
      const rows = await store.query<{ actor_id: string; details: unknown }>("select actor_id, details from audit_events where type = $1 order by id", [type]);
      const details = rows.map((r) => (typeof r.details === "string" ? JSON.parse(r.details) : r.details) as { i: number });
      expect(details.map((d) => d.i)).toEqual(Array.from({ length: 300 }, (_, i) => i));
      expect(rows.map((r) => r.actor_id)).toEqual(Array.from({ length: 300 }, (_, i) => String(i)));
    });

    test("details written in a batch come back as they were given: quotes, escapes, unicode, nesting, a redacted key", async () => {
      const type = `test.details.${crypto.randomUUID()}`;
      const given = [
        { text: 'a "quoted" \\ back\\slash', lines: "one\ntwo\tthree\r", unicode: "Grüße 🚀 \u2028" },
        { nested: { list: [1, "two", null, true, { deep: ["x"] }], empty: {} }, number: 1.5e300, negative: -0 },
        { note: "the key cak_0123456789abcdef0123 leaked" },
        {},
      ];
      statements = 0;
      await Promise.all(given.map((details, i) => audit(counted, { tenantId: DEFAULT_TENANT_ID, type, actor: { type: "agent", id: String(i) }, details })));
      expect(statements).toBe(1); // one batch: the multi-row statement took them all, not the row-by-row fallback
      const rows = await store.query<{ details: unknown; kind: string }>("select details, jsonb_typeof(details) as kind from audit_events where type = $1 order by actor_id", [type]);
      // Stored as objects, not as JSON strings inside jsonb (which a driver would hand back as text).
      expect(rows.map((r) => r.kind)).toEqual(["object", "object", "object", "object"]);
      const back = rows.map((r) => (typeof r.details === "string" ? JSON.parse(r.details) : r.details));
      expect(back).toEqual([given[0], { ...given[1], negative: 0 }, { note: "the key cak_[redacted] leaked" }, {}]);
    });

    test("an event the database refuses fails alone: the rest of its batch lands", async () => {
      const type = `test.partial.${crypto.randomUUID()}`;
      const results = await Promise.allSettled([
        audit(counted, { tenantId: DEFAULT_TENANT_ID, type, actor: { type: "system" } }),
        audit(counted, { tenantId: crypto.randomUUID(), type, actor: { type: "system" } }), // no such tenant
        audit(counted, { tenantId: DEFAULT_TENANT_ID, type, actor: { type: "system" } }),
      ]);
      expect(results.map((r) => r.status)).toEqual(["fulfilled", "rejected", "fulfilled"]);
      expect(await count(type)).toBe(2);
    });

    test("flushAudit waits for events nobody awaited (as at shutdown)", async () => {
      const type = `test.flush.${crypto.randomUUID()}`;
      for (let i = 0; i < 50; i++) void audit(counted, { tenantId: DEFAULT_TENANT_ID, type, actor: { type: "system" } });
      await flushAudit(counted);
      expect(await count(type)).toBe(50);
    });

    test("inside a caller's transaction the event is written there, and rolls back with it", async () => {
      const type = `test.tx.${crypto.randomUUID()}`;
      await store.transaction(async (tx: Queryable) => audit(tx, { tenantId: DEFAULT_TENANT_ID, type, actor: { type: "system" } }));
      expect(await count(type)).toBe(1);
      await store.transaction(async (tx: Queryable) => {
        await audit(tx, { tenantId: DEFAULT_TENANT_ID, type, actor: { type: "system" } });
        throw new Error("roll back");
      }).catch(() => {});
      expect(await count(type)).toBe(1);
    });

    test("a field named like a secret is refused before anything is written; a value that looks like one is redacted", async () => {
      await expect(audit(counted, { tenantId: DEFAULT_TENANT_ID, type: "test.secret", actor: { type: "system" }, details: { password: "x" } })).rejects.toThrow();
      expect(await count("test.secret")).toBe(0);
      // Values carry what clients typed: refusing them would fail a request after its change was made.
      const typed = `cak_${"ab".repeat(32)}`;
      await audit(counted, { tenantId: DEFAULT_TENANT_ID, type: "test.typed", actor: { type: "system" }, details: { company: typed, names: [`x ${typed} y`, `x\n${typed}`], nested: { [typed]: 1 }, site: "HQ" } });
      const [row] = await store.query<{ details: unknown }>("select details from audit_events where type = 'test.typed'");
      expect(row!.details).toEqual({ company: "cak_[redacted]", names: ["x cak_[redacted] y", "x\ncak_[redacted]"], nested: { "cak_[redacted]": 1 }, site: "HQ" });
    });
  });
}
