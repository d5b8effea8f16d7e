import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { queryAudit } from "../../src/audit/audit.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import type { Queryable, Store } from "../../src/store/store.ts";
import { createTestDb, FLAVORS, type TestDb } from "../helpers/stores.ts";

/** The audit log's actor filter (an id or a name) is served by indexes, not a read of the whole log. */
for (const flavor of FLAVORS) {
  describe(`audit actor filter (${flavor})`, () => {
    let db: TestDb;
    let store: Store;

    beforeAll(async () => {
      db = await createTestDb(flavor);
      store = await db.open();
      // A log of 20,000 events: agents (no name), users (id and name), anonymous failures (name only).
      await store.query(
        `insert into audit_events (id, tenant_id, type, actor_type, actor_id, actor_name, target_type, target_id, details)
         select lpad(i::text, 26, '0'), $1, 'test.filler', t.type, a.id, a.name, 'machine', 'm-' || (i % 500), '{}'
           from generate_series(1, 20000) as i,
                lateral (select case i % 3 when 0 then 'agent' when 1 then 'user' else 'anonymous' end as type) t,
                lateral (select case t.type when 'anonymous' then null else 'actor-' || (i % 997) end as id,
                                case t.type when 'agent' then null else 'name-' || (i % 991) end as name) a`,
        [DEFAULT_TENANT_ID]);
      await store.query("analyze audit_events");
    }, 60_000);
    afterAll(async () => {
      await store?.close();
      await db?.destroy();
    });

    test("by id or by name, the plan reads the two actor indexes and the answer is right", async () => {
      let sql = "";
      let params: readonly unknown[] = [];
      const capture: Queryable = { query: (s, p) => ((sql = s), (params = p ?? []), store.query(s, p)) };
      for (const actor of ["actor-17", "name-17"]) {
        const { events } = await queryAudit(capture, DEFAULT_TENANT_ID, { actor, limit: 50 });
        expect(events.length).toBeGreaterThan(0);
        expect(events.every((e) => e.actor_id === actor || e.actor_name === actor)).toBe(true);
        const plan = (await store.query<Record<string, string>>(`explain ${sql}`, params)).map((r) => Object.values(r)[0]).join("\n");
        expect(plan).not.toContain("Seq Scan");
        expect(plan).toContain("audit_events_actor ");
        expect(plan).toContain("audit_events_actor_name");
      }
    });
  });
}
