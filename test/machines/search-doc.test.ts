import { describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { applySchema } from "../../src/store/schema.ts";
import type { Store } from "../../src/store/store.ts";
import { useDb } from "../fixtures/harness.ts";
import { FLAVORS } from "../helpers/stores.ts";

const SCHEMA = readFileSync(join(import.meta.dir, "..", "..", "schema.sql"), "utf8");
/** schema.sql as it was before version 12, when `search_doc` was a generated column. */
const BEFORE_V12 = SCHEMA.slice(0, SCHEMA.indexOf("-- version: 12"));

/** Machines with every source of the document set, arrays long and short, one pending. */
async function insertMachines(store: Store, prefix = ""): Promise<string[]> {
  const ids: string[] = [];
  for (const [i, extra] of [
    { labels: { company: "Acme", site: "Berlin", department: "IT", device_type: "laptop", tags: ["prod", "ring1"] }, state: "active" },
    { labels: { tags: Array.from({ length: 12 }, (_, k) => `t${k}`) }, state: "pending" },
    { labels: {}, state: "active", inventory: {} },
  ].entries()) {
    const id = crypto.randomUUID();
    ids.push(id);
    const inventory = extra.inventory ?? {
      os: { name: "Debian", version: "12" }, kernel: "6.1.0", cpu: { model: "EPYC" }, hostname: `Host-${i}`, timezone: "Europe/Berlin",
      agent_version: "1.2.3", users: ["Alice", null, "bob"], private_ips: Array.from({ length: 10 }, (_, k) => `10.0.0.${k}`), macs: ["02:AB:00:00:00:01"],
    };
    await store.query(
      `insert into machines (id, tenant_id, machine_uid, hostname, public_key, labels, inventory, agent_version, external_ip, enrollment_state)
       values ($1, $2, $3, $4, 'pk', $5::text::jsonb, $6::text::jsonb, '1.2.3', '203.0.113.9', $7)`,
      [id, DEFAULT_TENANT_ID, `${prefix}UID-${i}`, `WS-${i}`, JSON.stringify(extra.labels), JSON.stringify(inventory), extra.state]);
  }
  return ids;
}

for (const flavor of FLAVORS) {
  describe(`machines.search_doc [${flavor}]`, () => {
    const ctx = useDb(flavor, { schema: false });
    const docs = (store: Store, ids: string[]) =>
      store.query<{ search_doc: string }>("select search_doc from machines where id = any($1::uuid[]) order by machine_uid", [ids]);
    const expected = (store: Store, id: string) =>
      store.query<{ doc: string }>("select tether_machine_search_doc(hostname, machine_uid, labels, inventory, agent_version, external_ip, enrollment_state) as doc from machines where id = $1", [id]);

    test("version 12 keeps each document as the generated column of version 11 made it", async () => {
      const store = await ctx.open();
      expect(await applySchema(store, BEFORE_V12)).toBe(11);
      const ids = await insertMachines(store);
      const before = await docs(store, ids);
      expect(before[1]!.search_doc).toContain("\npending");
      expect(before[0]!.search_doc).toContain("alice\nbob");
      expect(await applySchema(store)).toBeGreaterThanOrEqual(12);
      expect(await docs(store, ids)).toEqual(before);
      // A machine inserted afterwards gets the document it would have got before.
      const more = await insertMachines(store, "later-");
      expect((await docs(store, more)).map((d) => d.search_doc)).toEqual(before.map((d) => d.search_doc.replace(/\nuid-/, "\nlater-uid-")));
    });

    test("an update rebuilds the document when one of its sources changes, and only then", async () => {
      const store = await ctx.open();
      await applySchema(store);
      const [id] = await insertMachines(store);
      const doc = async () => (await docs(store, [id!]))[0]!.search_doc;
      const original = await doc();

      // A presence update that sets the same inventory again does not rebuild it: a marker put
      // in its place stays (the generated column of version 11 was rebuilt by every UPDATE).
      await store.query("update machines set search_doc = 'marker' where id = $1", [id]);
      await store.query("update machines set inventory = inventory || '{}'::jsonb, agent_version = agent_version where id = $1", [id]);
      expect(await doc()).toBe("marker");
      await store.query("update machines set search_doc = $2 where id = $1", [id, original]);

      for (const change of [
        "inventory = jsonb_set(inventory, '{hostname}', '\"Renamed-Host\"')",
        "labels = jsonb_set(labels, '{department}', '\"Finance\"')",
        "hostname = 'WS-NEW'",
        "external_ip = '198.51.100.7'",
        "agent_version = '2.0.0'",
        "enrollment_state = 'pending'",
        "enrollment_state = 'active'",
      ]) {
        const before = await doc();
        await store.query(`update machines set ${change} where id = $1`, [id]);
        const after = await doc();
        expect(after).not.toBe(before);
        expect(after).toBe((await expected(store, id!))[0]!.doc);
      }
      const final = await doc();
      expect(final).toContain("renamed-host");
      expect(final).toContain("finance");
      expect(final).toContain("ws-new");
      expect(final).not.toContain("pending");
    });
  });
}
