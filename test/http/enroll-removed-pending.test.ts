import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { verifyAgentKey } from "../../src/machines/agent-keys.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { ed25519PublicKey, enroll, enrolledMachine, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";

/**
 * Removing a machine while a clone-looking claim on it waits for an admin: the claim cannot be
 * decided any more (the machine is gone), so it must not keep the machine from coming back when
 * it enrolls again (SPEC M6: "a removed machine that enrolls again comes back").
 */
for (const flavor of FLAVORS) {
  describe(`enrollment: removal with a pending claim (${flavor})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      site = await siteWithKey(app);
    }, 60_000);
    afterAll(async () => app?.close());

    async function removedWithPendingClaim(host: string) {
      const original = await enrolledMachine(app, site, { hostname: host });
      await app.server.store.query("update machine_presence set status = 'online' where machine_id = $1", [original.id]);
      const claim = await enroll(app, { ...original.body, hostname: `${host}-CLONE`, public_key: await ed25519PublicKey() });
      expect(claim.status).toBe(202);
      expect((await app.call("DELETE", `/api/machines/${original.id}`, { token: app.adminToken })).status).toBe(204);
      await app.server.store.query("update machine_presence set status = 'offline' where machine_id = $1", [original.id]);
      // Removal settles the undecidable claim at once.
      expect(await app.server.store.query("select 1 from enrollment_requests where machine_id = $1 and status = 'pending'", [original.id])).toHaveLength(0);
      const [state] = await app.server.store.query<{ enrollment_state: string }>("select enrollment_state from machines where id = $1", [original.id]);
      expect(state!.enrollment_state).toBe("active");
      // Nothing is left to decide: the machine is gone.
      expect((await app.call("POST", `/api/machines/${original.id}/approve`, { token: app.adminToken })).status).toBe(404);
      return original;
    }

    test("a re-imaged machine (new identity key) enrolling again after removal is revived, active, with a working key", async () => {
      const original = await removedWithPendingClaim("WS-REIMAGED");
      const again = await enroll(app, { ...original.body, public_key: await ed25519PublicKey() });
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ machine_id: original.id, disposition: "reuse", enrollment_state: "active" });
      expect(await verifyAgentKey(app.server.store, original.id, again.body.key)).not.toBeNull();
      const seen = await app.call("GET", `/api/machines/${original.id}`, { token: app.adminToken });
      expect(seen.status).toBe(200);
      expect(seen.body).toMatchObject({ enrollment_state: "active", pending_request: null });
    });

    test("the same agent enrolling again after removal is not left pending with nothing to approve", async () => {
      const original = await removedWithPendingClaim("WS-SAMEAGENT");
      const again = await enroll(app, original.body);
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ machine_id: original.id, disposition: "reuse", enrollment_state: "active" });
      const [row] = await app.server.store.query<{ enrollment_state: string }>("select enrollment_state from machines where id = $1", [original.id]);
      expect(row!.enrollment_state).toBe("active");
      const pending = await app.server.store.query("select 1 from enrollment_requests where machine_id = $1 and status = 'pending'", [original.id]);
      expect(pending).toHaveLength(0);
    });
  });
}
