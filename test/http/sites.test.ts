import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { uniq } from "../machines/fixtures.ts";

for (const flavor of FLAVORS) {
  describe(`sites and enrollment keys (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    const createSite = (code: string, token = app.adminToken) =>
      app.call("POST", "/api/sites", { token, body: { site_code: code, display_name: "Head office", company: "Acme" } });

    test("create, read, list; the code is unique in the tenant", async () => {
      const code = uniq("ACME-HQ");
      const r = await createSite(code);
      expect(r.status).toBe(201);
      expect(r.body).toMatchObject({ site_code: code, display_name: "Head office", company: "Acme", enrollment_key: null });
      expect(r.body.install_command).toBe(`curl -fsSL '${app.url}/api/agent/install.sh' | sudo sh -s -- --site-code '${code}' --enrollment-key '<cek_…>'`);

      const one = await app.call("GET", `/api/sites/${r.body.id}`, { token: app.adminToken });
      expect(one.status).toBe(200);
      expect(one.body).toEqual(r.body);
      const list = await app.call("GET", "/api/sites", { token: app.adminToken });
      expect(list.body.sites.map((s: any) => s.id)).toContain(r.body.id);

      const dup = await createSite(code);
      expect(dup.status).toBe(409);
      expect(dup.body.error_code).toBe("SITE_CODE_TAKEN");
      expect((await app.call("GET", `/api/sites/${crypto.randomUUID()}`, { token: app.adminToken })).body.error_code).toBe("SITE_NOT_FOUND");
    });

    test("a bad site code is a 400 naming the field", async () => {
      const r = await createSite("has spaces; rm -rf /");
      expect(r.status).toBe(400);
      expect(r.body.detail).toContain("body.site_code");
    });

    test("rotation issues v1, then v2; the key is shown once, Argon2id at rest, one active key", async () => {
      const site = (await createSite(uniq("ROT"))).body;
      const none = await app.call("GET", `/api/sites/${site.id}/enrollment-key`, { token: app.adminToken });
      expect(none.status).toBe(404);
      expect(none.body.error_code).toBe("NO_ENROLLMENT_KEY");

      const v1 = await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken });
      expect(v1.status).toBe(201);
      expect(v1.body.key).toMatch(/^cek_[0-9a-f]{64}$/);
      const fp1 = createHash("sha256").update(v1.body.key).digest("hex").slice(0, 4).toUpperCase();
      expect(v1.body).toEqual({
        site_id: site.id, key: v1.body.key, version: 1, fingerprint: fp1, fingerprint_label: `v1 (${fp1})`,
        install_command: `curl -fsSL '${app.url}/api/agent/install.sh' | sudo sh -s -- --site-code '${site.site_code}' --enrollment-key '${v1.body.key}'`,
      });

      const meta = await app.call("GET", `/api/sites/${site.id}/enrollment-key`, { token: app.adminToken });
      expect(meta.status).toBe(200);
      expect(meta.body).toMatchObject({ site_id: site.id, version: 1, fingerprint: fp1, fingerprint_label: `v1 (${fp1})`, active: true });
      expect(JSON.stringify(meta.body)).not.toContain("cek_");
      const withKey = await app.call("GET", `/api/sites/${site.id}`, { token: app.adminToken });
      expect(withKey.body.enrollment_key).toEqual(meta.body);

      const v2 = await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken });
      expect(v2.body.version).toBe(2);
      expect(v2.body.key).not.toBe(v1.body.key);
      expect((await app.call("GET", `/api/sites/${site.id}/enrollment-key`, { token: app.adminToken })).body.version).toBe(2);

      const rows = await app.server.store.query<{ version: number; active: boolean; key_hash: string; rotated_at: Date | null }>(
        "select version, active, key_hash, rotated_at from site_enrollment_keys where site_id = $1 order by version", [site.id]);
      expect(rows.map((r) => [Number(r.version), r.active])).toEqual([[1, false], [2, true]]);
      expect(rows[0]!.rotated_at).not.toBeNull();
      for (const r of rows) {
        expect(r.key_hash).toStartWith("$argon2id$");
        expect(r.key_hash).not.toContain(v1.body.key.slice(4, 20));
        expect(r.key_hash).not.toContain(v2.body.key.slice(4, 20));
      }
      expect(await Bun.password.verify(v2.body.key, rows[1]!.key_hash)).toBe(true);
    });

    test("the database refuses a second active key for a site", async () => {
      const site = (await createSite(uniq("IDX"))).body;
      await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken });
      const second = app.server.store.query(
        "insert into site_enrollment_keys (id, tenant_id, site_id, key_hash, version, fingerprint) select $1, tenant_id, id, 'x', 99, 'ABCD' from sites where id = $2",
        [crypto.randomUUID(), site.id]);
      await expect(second).rejects.toThrow();
    });

    test("concurrent rotations serialize: distinct versions, one active key", async () => {
      const site = (await createSite(uniq("CONC"))).body;
      const all = await Promise.all([1, 2, 3].map(() => app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken })));
      expect(all.map((r) => r.status)).toEqual([201, 201, 201]);
      expect(all.map((r) => r.body.version).sort()).toEqual([1, 2, 3]);
      const [active] = await app.server.store.query<{ n: number }>("select count(*)::int as n from site_enrollment_keys where site_id = $1 and active", [site.id]);
      expect(Number(active!.n)).toBe(1);
    });

    test("rotation is audited with version and fingerprint, never the key", async () => {
      const site = (await createSite(uniq("AUD"))).body;
      const rotated = await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken });
      const [row] = await app.server.store.query<{ details: any; target_id: string; actor_type: string }>(
        "select details, target_id, actor_type from audit_events where type = 'enrollment_key.rotated' and target_id = $1", [site.id]);
      expect(row!.actor_type).toBe("user");
      expect(row!.details).toMatchObject({ site_id: site.id, site: site.site_code, key_version: 1, key_fingerprint: rotated.body.fingerprint });
      const everything = await app.server.store.query("select * from audit_events");
      expect(JSON.stringify(everything)).not.toContain(rotated.body.key.slice(4));
    });

    test("a name that looks like a secret is stored, and redacted in the audit log (it was a 500 after the site was made)", async () => {
      const company = `cak_${"5e".repeat(32)}`;
      const r = await app.call("POST", "/api/sites", { token: app.adminToken, body: { site_code: "LOOKALIKE", display_name: "Lookalike", company } });
      expect(r.status).toBe(201);
      expect(r.body.company).toBe(company);
      const events = (await app.call("GET", `/api/audit?type=site.created&target=${r.body.id}`, { token: app.adminToken })).body.events;
      expect(events[0].details).toMatchObject({ site: "LOOKALIKE", company: "cak_[redacted]" });
    });

    test("rotating an unknown site is 404 SITE_NOT_FOUND", async () => {
      const r = await app.call("POST", `/api/sites/${crypto.randomUUID()}/enrollment-key/rotate`, { token: app.adminToken });
      expect(r.status).toBe(404);
      expect(r.body.error_code).toBe("SITE_NOT_FOUND");
    });

    test("technicians and auditors read sites; only admins create and rotate", async () => {
      const site = (await createSite(uniq("PERM"))).body;
      for (const role of ["technician", "auditor"] as const) {
        const u = await app.user(role);
        expect((await app.call("GET", "/api/sites", { token: u.token })).status).toBe(200);
        expect((await app.call("GET", `/api/sites/${site.id}`, { token: u.token })).status).toBe(200);
        expect((await createSite(uniq("NOPE"), u.token)).status).toBe(403);
        expect((await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: u.token })).status).toBe(403);
      }
      const endUser = await app.user("end_user");
      expect((await app.call("GET", "/api/sites", { token: endUser.token })).status).toBe(403);
      expect((await app.call("GET", "/api/sites")).status).toBe(401);
    });

    test("an enrollment key is not a credential for the admin API", async () => {
      const site = (await createSite(uniq("PLANE"))).body;
      const key = (await app.call("POST", `/api/sites/${site.id}/enrollment-key/rotate`, { token: app.adminToken })).body.key;
      const r = await app.call("GET", "/api/sites", { token: key });
      expect(r.status).toBe(401);
      expect(r.body.error_code).toBe("WRONG_CREDENTIAL_PLANE");
    });

    test("the OpenAPI document describes the site routes", async () => {
      const doc = await app.call("GET", "/api/openapi.json");
      expect(doc.status).toBe(200);
      expect(Object.keys(doc.body.paths)).toEqual(expect.arrayContaining(["/api/sites", "/api/sites/{id}", "/api/sites/{id}/enrollment-key/rotate", "/api/sites/{id}/enrollment-key"]));
      expect(doc.body.paths["/api/sites"].post.tags).toEqual(["sites"]);
    });
  });
}
