import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { endUserMayReach, grantMachine, type GrantResult } from "../../src/machines/grants.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { enroll, enrolledMachine, siteWithKey } from "../machines/fixtures.ts";

const TENANT = "00000000-0000-0000-0000-000000000001";

for (const flavor of FLAVORS) {
  describe(`end-user grants (${flavor})`, () => {
    let app: TestApp;
    let m1: string;
    let m2: string;
    let foreign: string;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      const site = await siteWithKey(app);
      m1 = (await enrolledMachine(app, site)).id;
      m2 = (await enrolledMachine(app, site)).id;
      // A second tenant with a machine of its own, made by hand.
      const tenant2 = crypto.randomUUID();
      foreign = crypto.randomUUID();
      await app.server.store.query("insert into tenants (id, name) values ($1, 'other')", [tenant2]);
      await app.server.store.query("insert into machines (id, tenant_id, machine_uid, hostname, public_key) values ($1, $2, 'foreign-uid', 'FOREIGN', 'x')", [foreign, tenant2]);
    }, 60_000);
    afterAll(async () => app?.close());

    const visible = async (token: string) => ((await app.call("GET", "/api/machines", { token })).body.machines as Array<{ id: string }>).map((m) => m.id);
    const grant = (userId: string, machineId: string, token = app.adminToken) => app.call("POST", `/api/users/${userId}/grants`, { token, body: { machine_id: machineId } });

    test("an end user with no grants sees no machines", async () => {
      const eu = await app.user("end_user");
      const r = await app.call("GET", "/api/machines", { token: eu.token });
      expect(r.status).toBe(200);
      expect(r.body).toEqual({ machines: [], next_cursor: null });
      expect((await app.call("GET", `/api/machines/${m1}`, { token: eu.token })).status).toBe(404);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m1)).toBe(false);
    });

    test("granted machines only; revoking takes them back; audited", async () => {
      const eu = await app.user("end_user");
      const r = await grant(eu.id, m1);
      expect(r.status).toBe(201);
      expect(r.body).toMatchObject({ user_id: eu.id, machine_id: m1, hostname: expect.any(String) });
      expect((await grant(eu.id, m1)).status).toBe(200); // idempotent

      expect(await visible(eu.token)).toEqual([m1]);
      expect((await app.call("GET", `/api/machines/${m1}`, { token: eu.token })).status).toBe(200);
      expect((await app.call("GET", `/api/machines/${m2}`, { token: eu.token })).status).toBe(404);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m1)).toBe(true);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m2)).toBe(false);
      // Admins still see everything.
      expect(await visible(app.adminToken)).toEqual(expect.arrayContaining([m1, m2]));

      const listed = await app.call("GET", `/api/users/${eu.id}/grants`, { token: app.adminToken });
      expect(listed.body.grants.map((g: any) => g.machine_id)).toEqual([m1]);

      expect((await app.call("DELETE", `/api/users/${eu.id}/grants/${m1}`, { token: app.adminToken })).status).toBe(204);
      expect(await visible(eu.token)).toEqual([]);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m1)).toBe(false);
      const again = await app.call("DELETE", `/api/users/${eu.id}/grants/${m1}`, { token: app.adminToken });
      expect(again.status).toBe(404);
      expect(again.body.error_code).toBe("GRANT_NOT_FOUND");

      const types = await app.server.store.query<{ type: string; details: any }>("select type, details from audit_events where target_id = $1 and type like 'grant.%' order by id", [eu.id]);
      expect(types.map((t) => [t.type, t.details.machine_id])).toEqual([["grant.created", m1], ["grant.revoked", m1]]);
    });

    test("another tenant's machine is refused at grant time, and a grant row to it counts for nothing at use", async () => {
      const eu = await app.user("end_user");
      const r = await grant(eu.id, foreign);
      expect(r.status).toBe(404);
      expect(r.body.error_code).toBe("MACHINE_NOT_FOUND");
      expect(await app.server.store.query("select 1 from user_machine_grants where machine_id = $1", [foreign])).toHaveLength(0);

      // Even if such a row got in some other way, it is checked again at use.
      await app.server.store.query("insert into user_machine_grants (tenant_id, user_id, machine_id) values ($1, $2, $3)", [TENANT, eu.id, foreign]);
      expect(await visible(eu.token)).toEqual([]);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, foreign)).toBe(false);
    });

    test("only end users get grants; the role is checked again at use", async () => {
      const tech = await app.user("technician");
      const r = await grant(tech.id, m1);
      expect(r.status).toBe(409);
      expect(r.body.error_code).toBe("NOT_AN_END_USER");

      const eu = await app.user("end_user");
      expect((await grant(eu.id, m1)).status).toBe(201);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m1)).toBe(true);
      await app.call("PATCH", `/api/users/${eu.id}`, { token: app.adminToken, body: { role: "auditor" } });
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m1)).toBe(false);
      await app.call("PATCH", `/api/users/${eu.id}`, { token: app.adminToken, body: { role: "end_user" } });
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m1)).toBe(true);
      await app.call("PATCH", `/api/users/${eu.id}`, { token: app.adminToken, body: { disabled: true } });
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m1)).toBe(false);
    });

    test("removing a machine takes its grants back, audited; enrolled again, it is reachable only once granted anew", async () => {
      const site = await siteWithKey(app);
      const m = await enrolledMachine(app, site);
      const eu = await app.user("end_user");
      const other = await app.user("end_user");
      await grant(eu.id, m.id);
      await grant(other.id, m.id);
      await grant(other.id, m1);
      await app.call("DELETE", `/api/machines/${m.id}`, { token: app.adminToken });
      expect(await visible(eu.token)).toEqual([]);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m.id)).toBe(false);
      expect((await grant(eu.id, m.id)).status).toBe(404);
      // The other machine's grant stays.
      expect(await visible(other.token)).toEqual([m1]);

      const [removal] = await app.server.store.query<{ details: any }>("select details from audit_events where type = 'machine.removed' and target_id = $1", [m.id]);
      expect(removal!.details.grants_revoked).toBe(2);
      const revoked = await app.server.store.query<{ target_id: string; details: any }>(
        "select target_id, details from audit_events where type = 'grant.revoked' and details->>'machine_id' = $1 order by target_id", [m.id]);
      expect(revoked.map((r) => [r.target_id, r.details.reason])).toEqual([eu.id, other.id].sort().map((id) => [id, "machine_removed"]));

      // Back, as the same machine: nobody's grant came back with it.
      expect((await enroll(app, m.body)).status).toBe(200);
      expect(await visible(eu.token)).toEqual([]);
      expect(await endUserMayReach(app.server.store, { userId: eu.id, tenantId: TENANT }, m.id)).toBe(false);
      expect((await app.call("GET", `/api/users/${eu.id}/grants`, { token: app.adminToken })).body.grants).toEqual([]);
      expect((await grant(eu.id, m.id)).status).toBe(201);
      expect(await visible(eu.token)).toEqual([m.id]);
    });

    test.skipIf(flavor !== "postgres")("a grant racing a removal waits for it and is refused: it cannot land after the removal took the grants back", async () => {
      const site = await siteWithKey(app);
      const m = await enrolledMachine(app, site);
      const eu = await app.user("end_user");
      let granting: Promise<GrantResult> | undefined;
      // The removal's writes, held open while the grant is asked for on another connection.
      await app.server.store.transaction(async (tx) => {
        await tx.query("update machines set deleted_at = now() where id = $1", [m.id]);
        await tx.query("delete from user_machine_grants where machine_id = $1", [m.id]);
        granting = grantMachine(app.server.store, TENANT, eu.id, m.id, eu.id);
        await Bun.sleep(300);
      });
      expect(await granting!).toEqual({ ok: false, reason: "machine_not_found" });
      expect(await app.server.store.query("select 1 from user_machine_grants where machine_id = $1", [m.id])).toEqual([]);
    });

    test("a removed machine that still holds a grant (one that slipped past its removal) comes back without it, audited", async () => {
      const site = await siteWithKey(app);
      const m = await enrolledMachine(app, site);
      const eu = await app.user("end_user");
      await app.call("DELETE", `/api/machines/${m.id}`, { token: app.adminToken });
      await app.server.store.query("insert into user_machine_grants (tenant_id, user_id, machine_id) values ($1, $2, $3)", [TENANT, eu.id, m.id]);
      expect((await enroll(app, m.body)).status).toBe(200);
      expect(await visible(eu.token)).toEqual([]);
      expect(await app.server.store.query("select 1 from user_machine_grants where machine_id = $1", [m.id])).toEqual([]);
      const [reuse] = await app.server.store.query<{ details: any }>("select details from audit_events where type = 'enroll.reuse' and target_id = $1", [m.id]);
      expect(reuse!.details).toMatchObject({ revived: true, grants_revoked: 1 });
    });

    test("bulk removal takes back the grants of the machines it removed", async () => {
      const site = await siteWithKey(app);
      const a = await enrolledMachine(app, site);
      const b = await enrolledMachine(app, site);
      const eu = await app.user("end_user");
      await grant(eu.id, a.id);
      await grant(eu.id, b.id);
      const res = await app.call("POST", "/api/machines/bulk-delete", { token: app.adminToken, body: { ids: [a.id] } });
      expect(res.body.removed).toEqual([a.id]);
      expect(await visible(eu.token)).toEqual([b.id]);
      expect((await enroll(app, a.body)).status).toBe(200);
      expect(await visible(eu.token)).toEqual([b.id]);
    });

    test("only admins grant; users of the tenant only; bad ids are 400", async () => {
      const eu = await app.user("end_user");
      const tech = await app.user("technician");
      expect((await grant(eu.id, m1, tech.token)).status).toBe(403);
      expect((await grant(eu.id, m1, eu.token)).status).toBe(403);
      expect((await app.call("GET", `/api/users/${eu.id}/grants`, { token: eu.token })).status).toBe(403);
      expect((await app.call("DELETE", `/api/users/${eu.id}/grants/${m1}`, { token: tech.token })).status).toBe(403);
      expect((await grant(crypto.randomUUID(), m1)).body.error_code).toBe("USER_NOT_FOUND");
      expect((await app.call("GET", `/api/users/${crypto.randomUUID()}/grants`, { token: app.adminToken })).status).toBe(404);
      const bad = await app.call("POST", `/api/users/${eu.id}/grants`, { token: app.adminToken, body: { machine_id: "m1" } });
      expect(bad.status).toBe(400);
      expect(bad.body.detail).toContain("body.machine_id");
    });
  });
}
