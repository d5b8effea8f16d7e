import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { verifyAgentKey } from "../../src/machines/agent-keys.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { ed25519PublicKey, enroll, enrolledMachine, siteWithKey } from "../machines/fixtures.ts";

/**
 * 409 ENROLL_SITE_CONFLICT says "an admin must remove it there first": once an admin has removed
 * the machine at its old site, enrolling it at another site brings it back there (SPEC M6: a
 * removed machine that enrolls again comes back), not a 409 forever.
 */
for (const flavor of FLAVORS) {
  describe(`enrollment: moving a removed machine to another site (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    test("a live machine stays bound (409); after removal it enrolls at the other site, revived there, with the new site's labels", async () => {
      const first = await siteWithKey(app, undefined, "OldCo");
      const second = await siteWithKey(app, undefined, "NewCo");
      const m = await enrolledMachine(app, first, { labels: { department: "IT" } });
      const moved = { ...m.body, site_code: second.code, enrollment_key: second.key, public_key: await ed25519PublicKey() };

      const refused = await enroll(app, moved);
      expect(refused.status).toBe(409);
      expect(refused.body.error_code).toBe("ENROLL_SITE_CONFLICT");

      expect((await app.call("DELETE", `/api/machines/${m.id}`, { token: app.adminToken })).status).toBe(204);
      const again = await enroll(app, moved);
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ machine_id: m.id, disposition: "reuse", enrollment_state: "active" });
      expect(await verifyAgentKey(app.server.store, m.id, again.body.key)).not.toBeNull();
      expect(await verifyAgentKey(app.server.store, m.id, m.key)).toBeNull();

      const seen = await app.call("GET", `/api/machines/${m.id}`, { token: app.adminToken });
      expect(seen.status).toBe(200);
      expect(seen.body).toMatchObject({ site_id: second.id, site_code: second.code });
      // Site-derived labels come from the new site; what the agent itself said is kept.
      expect(seen.body.labels).toMatchObject({ company: "NewCo", site: `${second.code} office`, department: "IT" });
      const [event] = await app.server.store.query<{ details: any }>(
        "select details from audit_events where type = 'enroll.reuse' and target_id = $1", [m.id]);
      expect(event!.details).toMatchObject({ revived: true, site_id: second.id });

      // Bound to the new site now: the old one gets the 409.
      const back = await enroll(app, { ...moved, site_code: first.code, enrollment_key: first.key });
      expect(back.status).toBe(409);
    });
  });
}
