import { describe, expect, test } from "bun:test";
import { newSecret } from "../../src/auth/secrets.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { mintAgentKey, revokeAgentKey, verifyAgentKey } from "../../src/machines/agent-keys.ts";
import type { Store } from "../../src/store/store.ts";
import { FLAVORS, useSharedStore } from "../helpers/stores.ts";

for (const flavor of FLAVORS) {
  describe(`verifyAgentKey (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));
    const machine = async () => {
      const id = crypto.randomUUID();
      await store.query("insert into machines (id, tenant_id, machine_uid, hostname, public_key) values ($1, $2, $3, 'H', 'pk')", [id, DEFAULT_TENANT_ID, id]);
      return id;
    };

    test("the machine's live key verifies and its last use is recorded", async () => {
      const m = await machine();
      const k = await mintAgentKey(store, DEFAULT_TENANT_ID, m, null);
      const row = await verifyAgentKey(store, m, k.key);
      expect(row).toMatchObject({ id: k.id, machine_id: m, tenant_id: DEFAULT_TENANT_ID, prefix: k.prefix, revoked_at: null });
      expect(row!.last_used_at).not.toBeNull();
      expect(JSON.stringify(row)).not.toContain(k.key.slice(4));
    });

    test("anything else is null: malformed, unknown, another machine's key, revoked, removed machine", async () => {
      const m = await machine();
      const other = await machine();
      const k = await mintAgentKey(store, DEFAULT_TENANT_ID, m, null);
      const otherKey = await mintAgentKey(store, DEFAULT_TENANT_ID, other, null);
      expect(await verifyAgentKey(store, m, "cak_nope")).toBeNull();
      expect(await verifyAgentKey(store, m, k.key.toUpperCase())).toBeNull();
      expect(await verifyAgentKey(store, m, newSecret("agentKey"))).toBeNull();
      expect(await verifyAgentKey(store, m, otherKey.key)).toBeNull();
      expect(await verifyAgentKey(store, crypto.randomUUID(), k.key)).toBeNull();

      const second = await mintAgentKey(store, DEFAULT_TENANT_ID, m, null);
      await revokeAgentKey(store, DEFAULT_TENANT_ID, m, k.id);
      expect(await verifyAgentKey(store, m, k.key)).toBeNull();
      expect(await verifyAgentKey(store, m, second.key)).not.toBeNull();

      await store.query("update machines set deleted_at = now() where id = $1", [m]);
      expect(await verifyAgentKey(store, m, second.key)).toBeNull();
    });
  });
}
