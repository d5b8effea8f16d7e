import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { verifyAgentKey } from "../../src/machines/agent-keys.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import { enroll, enrolledMachine, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";

for (const flavor of FLAVORS) {
  describe(`machines (${flavor})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    let machines: Array<Awaited<ReturnType<typeof enrolledMachine>>>;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      site = await siteWithKey(app);
      machines = [];
      for (let i = 0; i < 5; i++) machines.push(await enrolledMachine(app, site));
    }, 60_000);
    afterAll(async () => app?.close());

    const list = (query = "", token = app.adminToken) => app.call("GET", `/api/machines${query}`, { token });
    const ids = (r: { body: any }) => r.body.machines.map((m: any) => m.id) as string[];

    test("the list has each machine's basic fields", async () => {
      const r = await list();
      expect(r.status).toBe(200);
      const m = r.body.machines.find((x: any) => x.id === machines[0]!.id);
      expect(m).toEqual({
        id: machines[0]!.id, hostname: machines[0]!.body.hostname, site_id: site.id, site_code: site.code,
        labels: { company: "Acme", site: `${site.code} office`, department: "IT", device_type: "", tags: ["prod"] },
        enrollment_state: "active", status: "offline", last_seen_at: null, created_at: expect.any(String),
        inventory: {}, external_ip: null, agent_version: null, disabled_at: null, live_sessions: [],
      });
      const one = await app.call("GET", `/api/machines/${machines[0]!.id}`, { token: app.adminToken });
      expect(one.body).toEqual({ ...m, pending_request: null });
    });

    test("each row shows who is connected to it now: its live sessions, until they end (SPEC M5)", async () => {
      const m = machines[4]!.id;
      const tech = await app.user("technician");
      const opened = await app.call("POST", "/api/sessions", { token: tech.token, body: { machine_id: m } });
      expect(opened.status).toBe(201);
      const row = async () => (await list()).body.machines.find((x: any) => x.id === m);
      expect((await row()).live_sessions).toEqual([{ id: opened.body.id, kind: "unattended", technician: tech.username, state: "waiting_for_agent", viewers: 0 }]);
      expect((await app.call("GET", `/api/machines/${m}`, { token: app.adminToken })).body.live_sessions).toHaveLength(1);
      // An end user granted the machine sees their own sessions there, not the technicians'.
      const eu = await app.user("end_user");
      expect((await app.call("POST", `/api/users/${eu.id}/grants`, { token: app.adminToken, body: { machine_id: m } })).status).toBe(201);
      const asEndUser = async () => (await app.call("GET", `/api/machines/${m}`, { token: eu.token })).body.live_sessions.map((x: any) => x.id);
      expect(await asEndUser()).toEqual([]);
      expect((await list("", eu.token)).body.machines.find((x: any) => x.id === m).live_sessions).toEqual([]);
      const own = await app.call("POST", "/api/sessions", { token: eu.token, body: { machine_id: m } });
      expect(own.status).toBe(201);
      expect(await asEndUser()).toEqual([own.body.id]);
      expect((await app.call("POST", `/api/sessions/${own.body.id}/end`, { token: eu.token })).status).toBe(200);
      expect((await app.call("POST", `/api/sessions/${opened.body.id}/end`, { token: tech.token })).status).toBe(200);
      await eventually(async () => (await row()).live_sessions.length === 0, 3_000, "the ended session gone from the row");
    });

    test("cursor pagination walks every machine once, in enrollment order", async () => {
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const r: { status: number; body: any } = await list(`?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
        expect(r.status).toBe(200);
        expect(r.body.machines.length).toBeLessThanOrEqual(2);
        seen.push(...ids(r));
        cursor = r.body.next_cursor;
        pages++;
      } while (cursor);
      expect(pages).toBe(3);
      expect(seen).toEqual(machines.map((m) => m.id));
      expect((await list("?limit=0")).status).toBe(400);
      expect((await list("?limit=501")).body.detail).toContain("query.limit");
      expect((await list("?cursor=nope")).status).toBe(400);
    });

    test("technicians and auditors read machines; only admins remove them", async () => {
      for (const role of ["technician", "auditor"] as const) {
        const u = await app.user(role);
        expect(ids(await list("", u.token))).toEqual(expect.arrayContaining(machines.map((m) => m.id)));
        expect((await app.call("DELETE", `/api/machines/${machines[0]!.id}`, { token: u.token })).status).toBe(403);
        expect((await app.call("POST", "/api/machines/bulk-delete", { token: u.token, body: { ids: [machines[0]!.id] } })).status).toBe(403);
      }
      expect((await list("", "")).status).toBe(401);
    });

    test("removal is a soft delete: gone from the API, keys revoked, audited; enrolling again revives it", async () => {
      const m = await enrolledMachine(app, site);
      const r = await app.call("DELETE", `/api/machines/${m.id}`, { token: app.adminToken });
      expect(r.status).toBe(204);
      expect((await app.call("GET", `/api/machines/${m.id}`, { token: app.adminToken })).status).toBe(404);
      expect(ids(await list("?limit=500"))).not.toContain(m.id);
      expect(await verifyAgentKey(app.server.store, m.id, m.key)).toBeNull();
      const [row] = await app.server.store.query<{ deleted_at: unknown }>("select deleted_at from machines where id = $1", [m.id]);
      expect(row!.deleted_at).not.toBeNull();
      const [event] = await app.server.store.query<{ actor_type: string; details: any }>("select actor_type, details from audit_events where type = 'machine.removed' and target_id = $1", [m.id]);
      expect(event).toMatchObject({ actor_type: "user", details: { hostname: m.body.hostname, machine_uid: m.body.machine_uid } });
      expect((await app.call("DELETE", `/api/machines/${m.id}`, { token: app.adminToken })).status).toBe(404);

      const back = await enroll(app, m.body);
      expect(back.status).toBe(200);
      expect(back.body).toMatchObject({ machine_id: m.id, disposition: "reuse" });
      expect((await app.call("GET", `/api/machines/${m.id}`, { token: app.adminToken })).status).toBe(200);
      expect(await verifyAgentKey(app.server.store, m.id, back.body.key)).not.toBeNull();
      const [reuse] = await app.server.store.query<{ details: any }>("select details from audit_events where type = 'enroll.reuse' and target_id = $1", [m.id]);
      expect(reuse!.details.revived).toBe(true);
    });

    test("bulk removal: up to 500 ids, each removed machine audited; unknown ids reported; 501 is a 400", async () => {
      const a = await enrolledMachine(app, site);
      const b = await enrolledMachine(app, site);
      const unknown = crypto.randomUUID();
      const r = await app.call("POST", "/api/machines/bulk-delete", { token: app.adminToken, body: { ids: [a.id, b.id, a.id, unknown] } });
      expect(r.status).toBe(200);
      expect(new Set(r.body.removed)).toEqual(new Set([a.id, b.id]));
      expect(r.body.not_found).toEqual([unknown]);
      const events = await app.server.store.query<{ target_id: string; details: any }>(
        "select target_id, details from audit_events where type = 'machine.removed' and target_id in ($1, $2)", [a.id, b.id]);
      expect(events.map((e) => e.target_id).sort()).toEqual([a.id, b.id].sort());
      expect(events.every((e) => e.details.bulk === true)).toBe(true);
      for (const m of [a, b]) expect(await verifyAgentKey(app.server.store, m.id, m.key)).toBeNull();

      const max = Array.from({ length: 500 }, () => crypto.randomUUID());
      const ok = await app.call("POST", "/api/machines/bulk-delete", { token: app.adminToken, body: { ids: max } });
      expect(ok.status).toBe(200);
      expect(ok.body.not_found).toHaveLength(500);
      const tooMany = await app.call("POST", "/api/machines/bulk-delete", { token: app.adminToken, body: { ids: [...max, crypto.randomUUID()] } });
      expect(tooMany.status).toBe(400);
      expect(tooMany.body.detail).toContain("body.ids");
      expect((await app.call("POST", "/api/machines/bulk-delete", { token: app.adminToken, body: { ids: [] } })).status).toBe(400);
    });

    test("another tenant's machine cannot be seen or removed", async () => {
      const tenant2 = crypto.randomUUID();
      const theirs = crypto.randomUUID();
      await app.server.store.query("insert into tenants (id, name) values ($1, 'other')", [tenant2]);
      await app.server.store.query("insert into machines (id, tenant_id, machine_uid, hostname, public_key) values ($1, $2, 'their-uid', 'THEIRS', 'x')", [theirs, tenant2]);
      expect(ids(await list("?limit=500"))).not.toContain(theirs);
      expect((await app.call("GET", `/api/machines/${theirs}`, { token: app.adminToken })).status).toBe(404);
      expect((await app.call("DELETE", `/api/machines/${theirs}`, { token: app.adminToken })).status).toBe(404);
      const bulk = await app.call("POST", "/api/machines/bulk-delete", { token: app.adminToken, body: { ids: [theirs] } });
      expect(bulk.body).toEqual({ removed: [], not_found: [theirs] });
      const [row] = await app.server.store.query<{ deleted_at: unknown }>("select deleted_at from machines where id = $1", [theirs]);
      expect(row!.deleted_at).toBeNull();
    });

    test("approve or reject with nothing pending is a 409; unknown machine a 404", async () => {
      const r = await app.call("POST", `/api/machines/${machines[1]!.id}/approve`, { token: app.adminToken });
      expect(r.status).toBe(409);
      expect(r.body.error_code).toBe("NO_PENDING_ENROLLMENT");
      expect((await app.call("POST", `/api/machines/${crypto.randomUUID()}/reject`, { token: app.adminToken })).status).toBe(404);
    });
  });
}
