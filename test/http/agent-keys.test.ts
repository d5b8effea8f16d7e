import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { sha256Hex } from "../../src/auth/secrets.ts";
import { verifyAgentKey } from "../../src/machines/agent-keys.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { enrolledMachine, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";

for (const flavor of FLAVORS) {
  describe(`agent keys (${flavor})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      site = await siteWithKey(app);
    }, 60_000);
    afterAll(async () => app?.close());

    const keysOf = (machineId: string, token = app.adminToken) => app.call("GET", `/api/machines/${machineId}/keys`, { token });

    test("mint: 201 with the cak_ once; stored as SHA-256; it verifies", async () => {
      const m = await enrolledMachine(app, site);
      const r = await app.call("POST", `/api/machines/${m.id}/keys`, { token: app.adminToken });
      expect(r.status).toBe(201);
      expect(r.body).toEqual({ id: expect.any(String), key: expect.stringMatching(/^cak_[0-9a-f]{64}$/), prefix: r.body.key.slice(0, 12), created_at: expect.any(String) });
      const [row] = await app.server.store.query<{ key_hash: string; created_by: string }>("select key_hash, created_by from agent_keys where id = $1", [r.body.id]);
      expect(row!.key_hash).toBe(sha256Hex(r.body.key));
      expect(row!.created_by).toBeTruthy();
      // Minting adds a key: the enrollment's key still works too.
      expect(await verifyAgentKey(app.server.store, m.id, r.body.key)).toMatchObject({ id: r.body.id, machine_id: m.id });
      expect(await verifyAgentKey(app.server.store, m.id, m.key)).not.toBeNull();
      const [event] = await app.server.store.query<{ details: any }>("select details from audit_events where type = 'agent_key.minted' and target_id = $1", [m.id]);
      expect(event!.details).toEqual({ agent_key_id: r.body.id, key_prefix: r.body.prefix });
    });

    test("list: metadata only, with last use and revocation", async () => {
      const m = await enrolledMachine(app, site);
      const minted = (await app.call("POST", `/api/machines/${m.id}/keys`, { token: app.adminToken })).body;
      await verifyAgentKey(app.server.store, m.id, minted.key);
      const r = await keysOf(m.id);
      expect(r.status).toBe(200);
      expect(r.body.keys).toHaveLength(2);
      const k = r.body.keys.find((x: any) => x.id === minted.id);
      expect(Object.keys(k).sort()).toEqual(["created_at", "id", "last_used_at", "prefix", "revoked_at"]);
      expect(k.last_used_at).not.toBeNull();
      expect(k.revoked_at).toBeNull();
      expect(JSON.stringify(r.body)).not.toContain(minted.key.slice(12));
    });

    test("revoke: 204, the key stops verifying at once, audited; a key of another machine is 404", async () => {
      const m = await enrolledMachine(app, site);
      const other = await enrolledMachine(app, site);
      const minted = (await app.call("POST", `/api/machines/${m.id}/keys`, { token: app.adminToken })).body;
      const otherKeyId = (await keysOf(other.id)).body.keys[0].id;

      const wrongMachine = await app.call("DELETE", `/api/machines/${m.id}/keys/${otherKeyId}`, { token: app.adminToken });
      expect(wrongMachine.status).toBe(404);
      expect(wrongMachine.body.error_code).toBe("AGENT_KEY_NOT_FOUND");
      expect(await verifyAgentKey(app.server.store, other.id, other.key)).not.toBeNull();
      expect((await app.call("DELETE", `/api/machines/${m.id}/keys/${crypto.randomUUID()}`, { token: app.adminToken })).status).toBe(404);

      const r = await app.call("DELETE", `/api/machines/${m.id}/keys/${minted.id}`, { token: app.adminToken });
      expect(r.status).toBe(204);
      expect(await verifyAgentKey(app.server.store, m.id, minted.key)).toBeNull();
      expect(await verifyAgentKey(app.server.store, m.id, m.key)).not.toBeNull(); // the other key is untouched
      expect((await keysOf(m.id)).body.keys.find((k: any) => k.id === minted.id).revoked_at).not.toBeNull();
      const events = await app.server.store.query<{ details: any }>("select details from audit_events where type = 'agent_key.revoked' and target_id = $1", [m.id]);
      expect(events.map((e) => e.details)).toEqual([{ agent_key_id: minted.id, key_prefix: minted.prefix }]);
      // Revoking again changes nothing and is not audited twice.
      expect((await app.call("DELETE", `/api/machines/${m.id}/keys/${minted.id}`, { token: app.adminToken })).status).toBe(204);
      expect(await app.server.store.query("select 1 from audit_events where type = 'agent_key.revoked' and target_id = $1", [m.id])).toHaveLength(1);
    });

    test("auditors list keys but cannot mint or revoke; technicians do neither; unknown machine is 404", async () => {
      const m = await enrolledMachine(app, site);
      const auditor = await app.user("auditor");
      const tech = await app.user("technician");
      expect((await keysOf(m.id, auditor.token)).status).toBe(200);
      expect((await app.call("POST", `/api/machines/${m.id}/keys`, { token: auditor.token })).status).toBe(403);
      const keyId = (await keysOf(m.id)).body.keys[0].id;
      expect((await app.call("DELETE", `/api/machines/${m.id}/keys/${keyId}`, { token: auditor.token })).status).toBe(403);
      expect((await keysOf(m.id, tech.token)).status).toBe(403);
      expect((await app.call("POST", `/api/machines/${crypto.randomUUID()}/keys`, { token: app.adminToken })).body.error_code).toBe("MACHINE_NOT_FOUND");
    });

    test("an agent key is not a credential for the admin API", async () => {
      const m = await enrolledMachine(app, site);
      const r = await app.call("GET", "/api/machines", { token: m.key });
      expect(r.status).toBe(401);
      expect(r.body.error_code).toBe("WRONG_CREDENTIAL_PLANE");
    });
  });
}
