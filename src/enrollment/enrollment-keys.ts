import { hashSecret } from "../auth/passwords.ts";
import { fingerprint, fingerprintLabel, newSecret } from "../auth/secrets.ts";
import { iso } from "../machines/rows.ts";
import type { Queryable, Store } from "../store/store.ts";

/**
 * Site enrollment keys (M1): `cek_` + 64 hex, stored as Argon2id, shown once at rotation, known
 * afterwards by a public fingerprint `vN (XXXX)`. One active key per site, which the database
 * enforces (a partial unique index); rotation retires the active key and issues version + 1 in
 * one transaction, and the first rotation issues v1. A retired key admits no new enrollment;
 * machines enrolled with it keep their own agent keys.
 */
export function keyMeta(siteId: string, version: number, fp: string, createdAt: Date | string) {
  return { site_id: siteId, version, fingerprint: fp, fingerprint_label: fingerprintLabel(version, fp), active: true, created_at: iso(createdAt) };
}

export interface RotatedKey {
  siteId: string;
  siteCode: string;
  /** The plaintext: returned to the admin once, never stored or logged. */
  key: string;
  version: number;
  fingerprint: string;
}

/** Issues the site's next key and retires the active one; null when the site is not the tenant's. */
export async function rotateEnrollmentKey(store: Store, tenantId: string, siteId: string): Promise<RotatedKey | null> {
  const key = newSecret("enrollmentKey");
  const fp = fingerprint(key);
  const hash = await hashSecret(key); // outside the transaction: no lock is held through the KDF
  return store.transaction(async (tx) => {
    // The site row lock orders concurrent rotations of one site.
    const [site] = await tx.query<{ id: string; site_code: string }>("select id, site_code from sites where tenant_id = $1 and id = $2 for update", [tenantId, siteId]);
    if (!site) return null;
    const [next] = await tx.query<{ version: number }>("select coalesce(max(version), 0) + 1 as version from site_enrollment_keys where site_id = $1", [siteId]);
    const version = Number(next!.version);
    await tx.query("update site_enrollment_keys set active = false, rotated_at = now() where site_id = $1 and active", [siteId]);
    await tx.query(
      "insert into site_enrollment_keys (id, tenant_id, site_id, key_hash, version, fingerprint) values ($1, $2, $3, $4, $5, $6)",
      [crypto.randomUUID(), tenantId, siteId, hash, version, fp]);
    return { siteId, siteCode: site.site_code, key, version, fingerprint: fp };
  });
}

/** A site an enrollment names, with one of its keys (active or retired) or none. */
export interface EnrollmentSiteKey {
  site_id: string;
  tenant_id: string;
  site_code: string;
  display_name: string;
  company: string;
  key_hash: string | null;
  key_version: number | null;
  key_fingerprint: string | null;
  key_active: boolean | null;
}

/**
 * Every site with this code, in every tenant (the public enroll endpoint has no tenant; codes
 * are unique within a tenant only), each with each of its keys. One query, whatever the answer.
 */
export async function sitesByCode(db: Queryable, siteCode: string): Promise<EnrollmentSiteKey[]> {
  const rows = await db.query<EnrollmentSiteKey>(
    `select s.id as site_id, s.tenant_id, s.site_code, s.display_name, s.company,
            k.key_hash, k.version as key_version, k.fingerprint as key_fingerprint, k.active as key_active
       from sites s left join site_enrollment_keys k on k.site_id = s.id
      where s.site_code = $1
      order by s.created_at, s.id, k.version`,
    [siteCode]);
  return rows.map((r) => ({ ...r, key_version: r.key_version === null ? null : Number(r.key_version) }));
}
