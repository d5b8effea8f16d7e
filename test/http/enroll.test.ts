import { afterAll, afterEach, beforeAll, describe, expect, spyOn, test } from "bun:test";
import { fingerprint, newSecret } from "../../src/auth/secrets.ts";
import { enrollmentKdf } from "../../src/enrollment/enroll.ts";
import { verifyAgentKey } from "../../src/machines/agent-keys.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { ed25519PublicKey, enroll, enrollBody, enrolledMachine, sansCorrelation, siteWithKey, uniq, type SiteWithKey } from "../machines/fixtures.ts";

const wrongKey = () => newSecret("enrollmentKey");

for (const flavor of FLAVORS) {
  describe(`POST /api/enroll (${flavor})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      site = await siteWithKey(app);
    }, 60_000);
    afterAll(async () => app?.close());

    const machineRows = (uid: string) =>
      app.server.store.query<{ id: string; tenant_id: string; site_id: string; hostname: string; labels: any; public_key: string; enrollment_state: string; deleted_at: unknown }>(
        "select id, tenant_id, site_id, hostname, labels, public_key, enrollment_state, deleted_at from machines where machine_uid = $1", [uid]);
    const liveKeys = (machineId: string) =>
      app.server.store.query<{ id: string }>("select id from agent_keys where machine_id = $1 and revoked_at is null", [machineId]);
    const auditOf = (type: string, machineUid: string) =>
      app.server.store.query<{ details: any; ip: string; outcome: string; target_id: string | null; tenant_id: string }>(
        "select details, ip, outcome, target_id, tenant_id from audit_events where type = $1 and details->>'machine_uid' = $2 order by id", [type, machineUid]);

    test("a new machine: 201 with its agent key once, one row with the site's labels, audited without key material", async () => {
      const body = await enrollBody(site, { labels: { department: "IT", tags: ["prod", "prod", "db"] } });
      const r = await enroll(app, body);
      expect(r.status).toBe(201);
      expect(r.body).toEqual({ machine_id: expect.any(String), key: expect.stringMatching(/^cak_[0-9a-f]{64}$/), enrollment_state: "active", disposition: "new" });

      const [row] = await machineRows(body.machine_uid);
      expect(row).toMatchObject({ id: r.body.machine_id, site_id: site.id, hostname: body.hostname, public_key: body.public_key, enrollment_state: "active", deleted_at: null });
      expect(row!.labels).toEqual({ company: "Acme", site: `${site.code} office`, department: "IT", device_type: "", tags: ["prod", "db"] });
      expect(await verifyAgentKey(app.server.store, r.body.machine_id, r.body.key)).toMatchObject({ machine_id: r.body.machine_id });

      const [event] = await auditOf("enroll.new", body.machine_uid);
      expect(event).toMatchObject({ ip: "127.0.0.1", outcome: "success", target_id: r.body.machine_id });
      expect(event!.details).toMatchObject({ machine_uid: body.machine_uid, site: site.code, key_version: 1, key_fingerprint: fingerprint(site.key), disposition: "new" });
      const all = JSON.stringify(await app.server.store.query("select * from audit_events"));
      expect(all).not.toContain(r.body.key.slice(4));
      expect(all).not.toContain(site.key.slice(4));
    });

    test("the same machine again: 200 reuse, same row, new identity key, earlier agent keys revoked", async () => {
      const first = await enrolledMachine(app, site);
      const again = await enroll(app, { ...first.body, hostname: "RENAMED-01", public_key: await ed25519PublicKey(), labels: {} });
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ machine_id: first.id, disposition: "reuse", enrollment_state: "active" });
      expect(again.body.key).not.toBe(first.key);

      const rows = await machineRows(first.body.machine_uid);
      expect(rows).toHaveLength(1);
      expect(rows[0]!.hostname).toBe("RENAMED-01");
      expect(rows[0]!.labels.department).toBe("IT"); // labels not given keep what the machine had
      expect(await verifyAgentKey(app.server.store, first.id, first.key)).toBeNull();
      expect(await verifyAgentKey(app.server.store, first.id, again.body.key)).not.toBeNull();
      expect(await liveKeys(first.id)).toHaveLength(1);
      expect((await auditOf("enroll.reuse", first.body.machine_uid))[0]!.details).toMatchObject({ disposition: "reuse", revoked_keys: 1 });
    });

    test("unknown site, wrong key, retired key, keyless site, malformed key: the identical 401", async () => {
      const keyless = await app.call("POST", "/api/sites", { token: app.adminToken, body: { site_code: uniq("KEYLESS"), display_name: "No key yet" } });
      const rotatedSite = await siteWithKey(app);
      const oldKey = rotatedSite.key;
      await app.call("POST", `/api/sites/${rotatedSite.id}/enrollment-key/rotate`, { token: app.adminToken });

      const cases = {
        unknown_site: await enrollBody(site, { site_code: uniq("NOWHERE") }),
        wrong_key: await enrollBody(site, { enrollment_key: wrongKey() }),
        rotated_key: await enrollBody(rotatedSite, { enrollment_key: oldKey }),
        no_active_key: await enrollBody(site, { site_code: keyless.body.site_code }),
        malformed: await enrollBody(site, { enrollment_key: "hunter2" }),
      };
      const bodies = [];
      for (const [reason, body] of Object.entries(cases)) {
        const r = await enroll(app, body);
        expect({ reason, status: r.status }).toEqual({ reason, status: 401 });
        bodies.push(sansCorrelation(r.body));
        const [event] = await auditOf("enroll.rejected", body.machine_uid);
        expect(event!.outcome).toBe("failure");
        expect(event!.details.reason).toBe(reason === "malformed" ? "wrong_key" : reason);
      }
      for (const b of bodies) expect(b).toEqual({ detail: "enrollment rejected", error_code: "ENROLL_REJECTED", status_code: 401, correlation_id: undefined });
      // Nothing was created for any of them.
      for (const body of Object.values(cases)) expect(await machineRows(body.machine_uid)).toHaveLength(0);
    });

    describe("every answer costs exactly one Argon2id verification", () => {
      let verify: ReturnType<typeof spyOn>;
      beforeAll(() => {
        verify = spyOn(Bun.password, "verify");
      });
      afterEach(() => verify.mockClear());
      afterAll(() => verify.mockRestore());

      test("counted: each rejection path and an acceptance verify once", async () => {
        const keyless = await app.call("POST", "/api/sites", { token: app.adminToken, body: { site_code: uniq("KDF-KEYLESS"), display_name: "x" } });
        const rotated = await siteWithKey(app);
        const oldKey = rotated.key;
        await app.call("POST", `/api/sites/${rotated.id}/enrollment-key/rotate`, { token: app.adminToken });
        const paths: Array<[string, Promise<Parameters<typeof enroll>[1]>, number]> = [
          ["unknown site", enrollBody(site, { site_code: uniq("KDF-NOWHERE") }), 401],
          ["no active key", enrollBody(site, { site_code: keyless.body.site_code }), 401],
          ["wrong key", enrollBody(site, { enrollment_key: wrongKey() }), 401],
          ["retired key", enrollBody(rotated, { enrollment_key: oldKey }), 401],
          ["malformed key", enrollBody(site, { enrollment_key: "cek_short" }), 401],
          ["accepted", enrollBody(site), 201],
        ];
        for (const [name, body, status] of paths) {
          verify.mockClear();
          const before = enrollmentKdf.verifications;
          const r = await enroll(app, await body);
          expect({ name, status: r.status, argon2Verifications: verify.mock.calls.length, counted: enrollmentKdf.verifications - before })
            .toEqual({ name, status, argon2Verifications: 1, counted: 1 });
        }
      });
    });

    test("timed: unknown site, keyless site and retired key take as long as a wrong key", async () => {
      const keyless = await app.call("POST", "/api/sites", { token: app.adminToken, body: { site_code: uniq("T-KEYLESS"), display_name: "x" } });
      const rotated = await siteWithKey(app);
      const oldKey = rotated.key;
      await app.call("POST", `/api/sites/${rotated.id}/enrollment-key/rotate`, { token: app.adminToken });
      const bodies = {
        wrong_key: await enrollBody(site, { enrollment_key: wrongKey() }),
        unknown_site: await enrollBody(site, { site_code: uniq("T-NOWHERE") }),
        no_active_key: await enrollBody(site, { site_code: keyless.body.site_code }),
        rotated_key: await enrollBody(rotated, { enrollment_key: oldKey }),
      };
      const median = async (body: (typeof bodies)["wrong_key"]) => {
        const times: number[] = [];
        for (let i = 0; i < 5; i++) {
          const t = performance.now();
          expect((await enroll(app, body)).status).toBe(401);
          times.push(performance.now() - t);
        }
        return times.sort((a, b) => a - b)[2]!;
      };
      const reference = await median(bodies.wrong_key);
      // Without the equalizing verification these answer in a few ms against tens of ms.
      for (const [reason, body] of Object.entries(bodies)) {
        const ratio = (await median(body)) / reference;
        expect({ reason, comparable: ratio > 0.4 && ratio < 2.5 }).toEqual({ reason, comparable: true });
      }
    });

    test("a machine_uid enrolled at another site: 409 ENROLL_SITE_CONFLICT, no move, no key", async () => {
      const other = await siteWithKey(app);
      const m = await enrolledMachine(app, site);
      const r = await enroll(app, { ...m.body, site_code: other.code, enrollment_key: other.key });
      expect(r.status).toBe(409);
      expect(r.body.error_code).toBe("ENROLL_SITE_CONFLICT");
      expect(r.body.key).toBeUndefined();
      const [row] = await machineRows(m.body.machine_uid);
      expect(row!.site_id).toBe(site.id);
      expect(await liveKeys(m.id)).toHaveLength(1);
      expect(await verifyAgentKey(app.server.store, m.id, m.key)).not.toBeNull();
      const [event] = await auditOf("enroll.site_conflict", m.body.machine_uid);
      expect(event!.details).toMatchObject({ site: other.code, bound_site_id: site.id, key_version: 1 });
    });

    test("five concurrent first enrollments of one machine converge to one row", async () => {
      const body = await enrollBody(site);
      const all = await Promise.all(Array.from({ length: 5 }, () => enroll(app, body)));
      expect(all.map((r) => r.status).sort()).toEqual([200, 200, 200, 200, 201]);
      expect(all.map((r) => r.body.disposition).sort()).toEqual(["new", "reuse", "reuse", "reuse", "reuse"]);
      const rows = await machineRows(body.machine_uid);
      expect(rows).toHaveLength(1);
      expect(new Set(all.map((r) => r.body.machine_id))).toEqual(new Set([rows[0]!.id]));
      // Each reuse revoked the keys before it: exactly one of the five keys is live.
      expect(await liveKeys(rows[0]!.id)).toHaveLength(1);
      const verified = await Promise.all(all.map((r) => verifyAgentKey(app.server.store, rows[0]!.id, r.body.key)));
      expect(verified.filter(Boolean)).toHaveLength(1);
    });

    test("rotation: the old key is refused, v2 enrolls, and machines enrolled with v1 keep working", async () => {
      const s = await siteWithKey(app);
      const enrolled = await enrolledMachine(app, s);
      const v2 = await app.call("POST", `/api/sites/${s.id}/enrollment-key/rotate`, { token: app.adminToken });
      expect(v2.body.version).toBe(2);

      const withOld = await enroll(app, await enrollBody(s));
      expect(withOld.status).toBe(401);
      expect(withOld.body.error_code).toBe("ENROLL_REJECTED");
      const withNew = await enroll(app, await enrollBody(s, { enrollment_key: v2.body.key }));
      expect(withNew.status).toBe(201);
      expect(await verifyAgentKey(app.server.store, enrolled.id, enrolled.key)).not.toBeNull();
      const rows = await app.server.store.query<{ details: any }>("select details from audit_events where type = 'enroll.new' and target_id = $1", [withNew.body.machine_id]);
      expect(rows[0]!.details).toMatchObject({ key_version: 2, key_fingerprint: v2.body.fingerprint });
    });

    test("a clone-looking enrollment is pending (202, no key) until an admin approves it", async () => {
      const original = await enrolledMachine(app, site, { hostname: "WS-ORIGINAL" });
      await app.server.store.query("update machine_presence set status = 'online' where machine_id = $1", [original.id]);
      const claimant = { ...original.body, hostname: "WS-CLONE", public_key: await ed25519PublicKey(), labels: { department: "Sales" } };

      const r = await enroll(app, claimant);
      expect(r.status).toBe(202);
      expect(r.body).toEqual({ machine_id: original.id, enrollment_state: "pending", disposition: "collision_pending" });
      expect(await machineRows(original.body.machine_uid)).toHaveLength(1);
      const seen = await app.call("GET", `/api/machines/${original.id}`, { token: app.adminToken });
      expect(seen.body).toMatchObject({ hostname: "WS-ORIGINAL", enrollment_state: "pending", pending_request: { hostname: "WS-CLONE", ip: "127.0.0.1" } });
      expect(seen.body.pending_request.labels.department).toBe("Sales");
      // The gate withholds only a new key: the original agent's key still works.
      expect(await verifyAgentKey(app.server.store, original.id, original.key)).not.toBeNull();
      expect((await auditOf("enroll.collision_pending", claimant.machine_uid))[0]!.details).toMatchObject({ hostname: "WS-CLONE", disposition: "collision_pending" });

      // The claimant retrying meanwhile stays pending.
      expect((await enroll(app, claimant)).status).toBe(202);

      const approved = await app.call("POST", `/api/machines/${original.id}/approve`, { token: app.adminToken });
      expect(approved.status).toBe(200);
      expect(approved.body).toMatchObject({ id: original.id, hostname: "WS-CLONE", enrollment_state: "active" });
      const [row] = await machineRows(original.body.machine_uid);
      expect(row!.public_key).toBe(claimant.public_key);
      expect(await verifyAgentKey(app.server.store, original.id, original.key)).toBeNull();

      const next = await enroll(app, claimant);
      expect(next.status).toBe(200);
      expect(next.body).toMatchObject({ machine_id: original.id, disposition: "reuse", enrollment_state: "active" });
      expect(await verifyAgentKey(app.server.store, original.id, next.body.key)).not.toBeNull();
      expect((await app.call("POST", `/api/machines/${original.id}/approve`, { token: app.adminToken })).body.error_code).toBe("NO_PENDING_ENROLLMENT");
    });

    test("a second claimant does not replace the claim that waits; it is queued once that one is decided", async () => {
      const original = await enrolledMachine(app, site, { hostname: "WS-FIRST" });
      await app.server.store.query("update machine_presence set status = 'online' where machine_id = $1", [original.id]);
      const first = { ...original.body, hostname: "WS-CLAIM-1", public_key: await ed25519PublicKey() };
      const second = { ...original.body, hostname: "WS-CLAIM-2", public_key: await ed25519PublicKey() };
      expect((await enroll(app, first)).status).toBe(202);
      const waiting = async () => (await app.call("GET", `/api/machines/${original.id}`, { token: app.adminToken })).body.pending_request;
      const claim = await waiting();
      expect(claim.hostname).toBe("WS-CLAIM-1");

      const r = await enroll(app, second);
      expect([r.status, r.body.disposition]).toEqual([202, "collision_pending"]);
      expect(await waiting()).toEqual(claim);
      const audited = await auditOf("enroll.collision_pending", original.body.machine_uid);
      expect(audited.map((a) => [a.details.hostname, a.details.request_id, a.details.competing ?? false])).toEqual([
        ["WS-CLAIM-1", claim.id, false], ["WS-CLAIM-2", claim.id, true]]);
      const fp = (b64: string) => new Bun.CryptoHasher("sha256").update(Buffer.from(b64, "base64")).digest("hex").slice(0, 16);
      expect(audited.map((a) => a.details.claimant_key_fingerprint)).toEqual([fp(first.public_key), fp(second.public_key)]);
      // The first claimant retrying refreshes its own claim, which stays the one shown.
      expect((await enroll(app, { ...first, labels: { department: "Ops" } })).status).toBe(202);
      expect((await waiting()).labels.department).toBe("Ops");

      // Approving takes the claim shown: the first claimant's key becomes the machine's.
      expect((await app.call("POST", `/api/machines/${original.id}/approve`, { token: app.adminToken })).status).toBe(200);
      expect((await machineRows(original.body.machine_uid))[0]!.public_key).toBe(first.public_key);
      // The second claimant's retries are judged afresh: with the approved machine online under
      // another hostname, it is the claim that waits now.
      await app.server.store.query("update machine_presence set status = 'online' where machine_id = $1", [original.id]);
      expect((await enroll(app, second)).status).toBe(202);
      expect((await waiting()).hostname).toBe("WS-CLAIM-2");
    });

    test("a rejected claimant: the machine is active again, its agent keeps working, the claimant is refused", async () => {
      const original = await enrolledMachine(app, site, { hostname: "WS-REAL" });
      await app.server.store.query("update machine_presence set status = 'online' where machine_id = $1", [original.id]);
      const claimant = { ...original.body, hostname: "WS-TWIN", public_key: await ed25519PublicKey() };
      expect((await enroll(app, claimant)).status).toBe(202);

      const tech = await app.user("technician");
      expect((await app.call("POST", `/api/machines/${original.id}/reject`, { token: tech.token })).status).toBe(403);
      const rejected = await app.call("POST", `/api/machines/${original.id}/reject`, { token: app.adminToken });
      expect(rejected.status).toBe(200);
      expect(rejected.body).toMatchObject({ hostname: "WS-REAL", enrollment_state: "active" });
      expect(await verifyAgentKey(app.server.store, original.id, original.key)).not.toBeNull();

      const again = await enroll(app, claimant);
      expect(again.status).toBe(401);
      expect(again.body.error_code).toBe("ENROLL_REJECTED");
      expect((await auditOf("enroll.rejected", claimant.machine_uid))[0]!.details.reason).toBe("claimant_rejected");
      // The real machine re-installing under its own name is an ordinary reuse.
      const real = await enroll(app, { ...original.body, public_key: await ed25519PublicKey() });
      expect(real.status).toBe(200);
      const decided = await app.server.store.query<{ type: string }>("select type from audit_events where target_id = $1 and type like 'machine.%'", [original.id]);
      expect(decided.map((d) => d.type)).toEqual(["machine.rejected"]);
    });

    test("20 consecutive failures lock (site code, IP) out: 429 with Retry-After; an accepted key resets the streak", async () => {
      const s = await siteWithKey(app);
      const fail = async () => (await enroll(app, await enrollBody(s, { enrollment_key: wrongKey() }))).status;
      for (let i = 0; i < 10; i++) expect(await fail()).toBe(401);
      expect((await enroll(app, await enrollBody(s))).status).toBe(201); // resets the streak
      for (let i = 0; i < 19; i++) expect(await fail()).toBe(401); // 19 in a row: not yet
      expect(await fail()).toBe(401); // the 20th locks

      const locked = await enroll(app, await enrollBody(s)); // even the right key
      expect(locked.status).toBe(429);
      expect(locked.body.error_code).toBe("RATE_LIMITED");
      const retryAfter = Number(locked.headers.get("retry-after"));
      expect(retryAfter).toBeGreaterThan(800);
      expect(retryAfter).toBeLessThanOrEqual(900);
      const [event] = await app.server.store.query<{ details: any; outcome: string }>("select details, outcome from audit_events where type = 'enroll.rate_limited' and details->>'site' = $1", [s.code]);
      expect(event).toMatchObject({ outcome: "failure", details: { reason: "locked_out" } });
      // Another site from the same address has its own bucket.
      expect((await enroll(app, await enrollBody(site))).status).toBe(201);
    });

    test("the public key must be base64 of 32 bytes; bad input is a 400 naming the field", async () => {
      const short = await enroll(app, await enrollBody(site, { public_key: Buffer.alloc(31, 7).toString("base64") }));
      expect(short.status).toBe(400);
      expect(short.body.detail).toContain("body.public_key");
      expect((await enroll(app, await enrollBody(site, { public_key: "not base64 at all, no sir, not this one!!!!" }))).status).toBe(400);
      const { machine_uid: _, ...noUid } = await enrollBody(site);
      const missing = await app.call("POST", "/api/enroll", { body: noUid });
      expect(missing.status).toBe(400);
      expect(missing.body.detail).toContain("machine_uid");
    });

    test("site codes are looked up across tenants; the key decides which tenant's site it is", async () => {
      const tenant2 = crypto.randomUUID();
      const site2 = crypto.randomUUID();
      const key2 = newSecret("enrollmentKey");
      await app.server.store.query("insert into tenants (id, name) values ($1, 'second')", [tenant2]);
      await app.server.store.query("insert into sites (id, tenant_id, site_code, display_name, company) values ($1, $2, $3, 'Theirs', 'Globex')", [site2, tenant2, site.code]);
      await app.server.store.query("insert into site_enrollment_keys (id, tenant_id, site_id, key_hash, version, fingerprint) values ($1, $2, $3, $4, 1, $5)",
        [crypto.randomUUID(), tenant2, site2, await Bun.password.hash(key2, { algorithm: "argon2id", memoryCost: 19_456, timeCost: 2 }), fingerprint(key2)]);

      const theirs = await enroll(app, await enrollBody(site, { enrollment_key: key2 }));
      expect(theirs.status).toBe(201);
      const ours = await enroll(app, await enrollBody(site));
      expect(ours.status).toBe(201);
      const rows = await app.server.store.query<{ id: string; tenant_id: string; site_id: string; labels: any }>(
        "select id, tenant_id, site_id, labels from machines where id in ($1, $2)", [theirs.body.machine_id, ours.body.machine_id]);
      const byId = new Map(rows.map((r) => [r.id, r]));
      expect(byId.get(theirs.body.machine_id)).toMatchObject({ tenant_id: tenant2, site_id: site2 });
      expect(byId.get(theirs.body.machine_id)!.labels.company).toBe("Globex");
      expect(byId.get(ours.body.machine_id)!.tenant_id).toBe("00000000-0000-0000-0000-000000000001");
      // The other tenant's machine is invisible here.
      expect((await app.call("GET", `/api/machines/${theirs.body.machine_id}`, { token: app.adminToken })).status).toBe(404);
      expect((await enroll(app, await enrollBody(site, { enrollment_key: wrongKey() }))).status).toBe(401);
    });
  });
}
