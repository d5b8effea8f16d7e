import { describe, expect, test } from "bun:test";
import { verifySecret } from "../../src/auth/passwords.ts";
import { fingerprint, fingerprintLabel, newSecret } from "../../src/auth/secrets.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { checkEnrollmentKey, enrollmentKdf, type RejectReason } from "../../src/enrollment/enroll.ts";
import { rotateEnrollmentKey } from "../../src/enrollment/enrollment-keys.ts";
import { createSite, KEY_PLACEHOLDER } from "../../src/enrollment/sites.ts";
import { installCommand } from "../../src/install/install-script.ts";
import type { Store } from "../../src/store/store.ts";
import { FLAVORS, useSharedStore } from "../helpers/stores.ts";

test("fingerprints: first 4 hex of SHA-256, upper case, rendered vN (XXXX)", () => {
  const key = newSecret("enrollmentKey");
  expect(key).toMatch(/^cek_[0-9a-f]{64}$/);
  expect(fingerprint(key)).toMatch(/^[0-9A-F]{4}$/);
  expect(fingerprint(key)).toBe(new Bun.CryptoHasher("sha256").update(key).digest("hex").slice(0, 4).toUpperCase());
  expect(fingerprintLabel(3, "7F2A")).toBe("v3 (7F2A)");
});

test("the install command fetches the server's script and passes the site and key, quoted for sh", () => {
  expect(installCommand("https://tether.example", "ACME-HQ", KEY_PLACEHOLDER)).toBe(
    "curl -fsSL 'https://tether.example/api/agent/install.sh' | sudo sh -s -- --site-code 'ACME-HQ' --enrollment-key '<cek_…>'");
  expect(installCommand("https://t.example", "a'b", "k")).toContain(`--site-code 'a'\\''b'`);
});

for (const flavor of FLAVORS) {
  describe(`enrollment keys in the store (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));

    test("rotation: v1, v2, v3; one active key; each hash verifies only its own key", async () => {
      const site = await createSite(store, DEFAULT_TENANT_ID, { siteCode: "ROT-1", displayName: "R", company: "" });
      const keys = [];
      for (let i = 0; i < 3; i++) keys.push((await rotateEnrollmentKey(store, DEFAULT_TENANT_ID, site.id))!);
      expect(keys.map((k) => k.version)).toEqual([1, 2, 3]);
      const rows = await store.query<{ version: number; active: boolean; key_hash: string; fingerprint: string }>(
        "select version, active, key_hash, fingerprint from site_enrollment_keys where site_id = $1 order by version", [site.id]);
      expect(rows.map((r) => r.active)).toEqual([false, false, true]);
      expect(rows.map((r) => r.fingerprint)).toEqual(keys.map((k) => fingerprint(k.key)));
      expect(await verifySecret(keys[2]!.key, rows[2]!.key_hash)).toBe(true);
      expect(await verifySecret(keys[1]!.key, rows[2]!.key_hash)).toBe(false);
      // Not the tenant's site: nothing happens.
      expect(await rotateEnrollmentKey(store, crypto.randomUUID(), site.id)).toBeNull();
    });

    test("the key check pays one verification on every path and says why it refused", async () => {
      const keyless = await createSite(store, DEFAULT_TENANT_ID, { siteCode: "CHK-KEYLESS", displayName: "K", company: "" });
      const site = await createSite(store, DEFAULT_TENANT_ID, { siteCode: "CHK-1", displayName: "C", company: "Acme" });
      const v1 = (await rotateEnrollmentKey(store, DEFAULT_TENANT_ID, site.id))!;
      const v2 = (await rotateEnrollmentKey(store, DEFAULT_TENANT_ID, site.id))!;
      const cases: Array<[string, string, RejectReason | null]> = [
        ["NOWHERE", v2.key, "unknown_site"],
        [keyless.site_code, v2.key, "no_active_key"],
        ["CHK-1", newSecret("enrollmentKey"), "wrong_key"],
        ["CHK-1", v1.key, "rotated_key"],
        ["CHK-1", "not-a-key", "wrong_key"],
        ["CHK-1", v2.key, null],
      ];
      for (const [code, key, reason] of cases) {
        const before = enrollmentKdf.verifications;
        const r = await checkEnrollmentKey(store, code, key);
        expect({ code, reason: r.ok ? null : r.reason, verifications: enrollmentKdf.verifications - before }).toEqual({ code, reason, verifications: 1 });
        if (r.ok) expect(r.site).toMatchObject({ id: site.id, tenantId: DEFAULT_TENANT_ID, code: "CHK-1", company: "Acme", keyVersion: 2, keyFingerprint: v2.fingerprint });
      }
      const rotated = await checkEnrollmentKey(store, "CHK-1", v1.key);
      expect(!rotated.ok && rotated.site?.keyVersion).toBe(1);
    });

    test("a code two tenants share: the presented key's fingerprint picks the site, even when fingerprints collide", async () => {
      const tenant2 = crypto.randomUUID();
      await store.query("insert into tenants (id, name) values ($1, 'two')", [tenant2]);
      const ours = await createSite(store, DEFAULT_TENANT_ID, { siteCode: "SHARED", displayName: "Ours", company: "" });
      const theirs = await createSite(store, tenant2, { siteCode: "SHARED", displayName: "Theirs", company: "" });
      const ourKey = (await rotateEnrollmentKey(store, DEFAULT_TENANT_ID, ours.id))!;
      const theirKey = (await rotateEnrollmentKey(store, tenant2, theirs.id))!;

      for (const [key, site, tenant] of [[ourKey.key, ours.id, DEFAULT_TENANT_ID], [theirKey.key, theirs.id, tenant2]] as const) {
        const before = enrollmentKdf.verifications;
        const r = await checkEnrollmentKey(store, "SHARED", key);
        expect(r.ok && [r.site.id, r.site.tenantId]).toEqual([site, tenant]);
        expect(enrollmentKdf.verifications - before).toBe(1 + (ourKey.fingerprint === theirKey.fingerprint && key === theirKey.key ? 1 : 0));
      }

      // Force a fingerprint collision: a third tenant's key with the same fingerprint as ours.
      let twin = newSecret("enrollmentKey");
      while (fingerprint(twin) !== ourKey.fingerprint) twin = newSecret("enrollmentKey");
      const tenant3 = crypto.randomUUID();
      await store.query("insert into tenants (id, name) values ($1, 'three')", [tenant3]);
      const third = await createSite(store, tenant3, { siteCode: "SHARED", displayName: "Third", company: "" });
      await store.query("insert into site_enrollment_keys (id, tenant_id, site_id, key_hash, version, fingerprint) values ($1, $2, $3, $4, 1, $5)",
        [crypto.randomUUID(), tenant3, third.id, await Bun.password.hash(twin, { algorithm: "argon2id", memoryCost: 19_456, timeCost: 2 }), ourKey.fingerprint]);
      const r = await checkEnrollmentKey(store, "SHARED", twin);
      expect(r.ok && r.site.id).toBe(third.id);
      const wrong = await checkEnrollmentKey(store, "SHARED", newSecret("enrollmentKey"));
      expect(wrong).toMatchObject({ ok: false, reason: "wrong_key", tenantId: DEFAULT_TENANT_ID, site: null });
    });
  });
}
