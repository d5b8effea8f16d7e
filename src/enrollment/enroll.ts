import { verifyNothing, verifySecret } from "../auth/passwords.ts";
import { fingerprint, isSecret } from "../auth/secrets.ts";
import { DEFAULT_TENANT_ID } from "../auth/tenants.ts";
import { mintAgentKey, revokeMachineKeys } from "../machines/agent-keys.ts";
import { dropMachineGrants } from "../machines/grants.ts";
import { releasePendingClaims } from "../machines/machines.ts";
import { labelsOf } from "../machines/rows.ts";
import type { EnrollRequest, MachineLabels } from "../protocol/machines.ts";
import type { Queryable, Store } from "../store/store.ts";
import { sitesByCode, type EnrollmentSiteKey } from "./enrollment-keys.ts";

/**
 * `POST /api/enroll` (M1), without the HTTP: check the site's enrollment key, then bind the
 * machine_uid to one machine row and answer new / reuse / collision_pending / site conflict.
 *
 * The key check costs exactly one Argon2id verification on every path, so an unknown site, a
 * site without a key, a retired key and a wrong key cannot be told apart by time: when no stored
 * key can match (no site, no active key, or a fingerprint that matches no active key) it
 * verifies against a throwaway hash instead. Site codes are looked up across tenants (the
 * endpoint has no tenant; codes are unique within a tenant only); should two tenants' sites
 * share a code, the presented key's fingerprint picks the candidate, and only a 16-bit
 * fingerprint collision between them costs a second verification.
 */

/** Argon2id verifications enrollment has made, counted so tests can assert one per request. */
export const enrollmentKdf = { verifications: 0 };

async function kdfVerify(presented: string, phc: string | null): Promise<boolean> {
  enrollmentKdf.verifications++;
  return phc === null ? verifyNothing(presented) : verifySecret(presented, phc);
}

/** The site an enrollment names, and which of its keys the request is about. */
export interface SiteRef {
  id: string;
  tenantId: string;
  code: string;
  displayName: string;
  company: string;
  keyVersion: number | null;
  keyFingerprint: string | null;
}

export type RejectReason = "unknown_site" | "no_active_key" | "wrong_key" | "rotated_key" | "claimant_rejected";

export type EnrollOutcome =
  | { kind: "rejected"; reason: RejectReason; tenantId: string; site: SiteRef | null; machineId?: string }
  | { kind: "site_conflict"; tenantId: string; site: SiteRef; machineId: string; boundSiteId: string }
  /** `competing`: another claimant's claim was waiting already, and stays as it was. */
  | { kind: "collision_pending"; tenantId: string; site: SiteRef; machineId: string; requestId: string; competing: boolean }
  | { kind: "new" | "reuse"; tenantId: string; site: SiteRef; machineId: string; key: string; keyId: string; enrollmentState: "active" | "pending"; revived: boolean; revokedKeys: number; revokedGrants: number };

const ref = (r: EnrollmentSiteKey, withKey: boolean): SiteRef => ({
  id: r.site_id, tenantId: r.tenant_id, code: r.site_code, displayName: r.display_name, company: r.company,
  keyVersion: withKey ? r.key_version : null, keyFingerprint: withKey ? r.key_fingerprint : null,
});

type KeyCheck = { ok: true; site: SiteRef } | { ok: false; reason: RejectReason; tenantId: string; site: SiteRef | null };

/** The site whose active key `presented` is, after exactly one Argon2id verification (see above). */
export async function checkEnrollmentKey(db: Queryable, siteCode: string, presented: string): Promise<KeyCheck> {
  const rows = await sitesByCode(db, siteCode);
  const fp = isSecret("enrollmentKey", presented) ? fingerprint(presented) : null;
  const active = rows.filter((r) => r.key_active === true);
  const candidates = fp ? active.filter((r) => r.key_fingerprint === fp) : [];
  if (candidates.length === 0) await kdfVerify(presented, null);
  for (const c of candidates) if (await kdfVerify(presented, c.key_hash)) return { ok: true, site: ref(c, true) };

  // Rejected. Why, for the audit log only: the answer is the same 401 whatever the reason.
  const siteIds = new Set(rows.map((r) => r.site_id));
  const only = siteIds.size === 1 ? rows[0]! : null;
  const tenantId = only?.tenant_id ?? DEFAULT_TENANT_ID;
  if (!only) return { ok: false, reason: rows.length === 0 ? "unknown_site" : "wrong_key", tenantId, site: null };
  const retired = fp ? rows.find((r) => r.key_active === false && r.key_fingerprint === fp) : undefined;
  if (retired) return { ok: false, reason: "rotated_key", tenantId, site: ref(retired, true) };
  if (active.length === 0) return { ok: false, reason: "no_active_key", tenantId, site: ref(only, false) };
  return { ok: false, reason: "wrong_key", tenantId, site: ref(active[0]!, true) };
}

export async function enroll(store: Store, input: EnrollRequest, ip: string): Promise<EnrollOutcome> {
  const check = await checkEnrollmentKey(store, input.site_code, input.enrollment_key);
  if (!check.ok) return { kind: "rejected", reason: check.reason, tenantId: check.tenantId, site: check.site };
  return store.transaction((tx) => bindMachine(tx, check.site, input, ip));
}

interface ExistingMachine {
  id: string;
  site_id: string | null;
  hostname: string;
  public_key: string;
  labels: unknown;
  status: "online" | "offline";
  enrollment_state: "active" | "pending";
  deleted_at: Date | string | null;
}

/**
 * One row per (tenant, machine_uid), soft-deleted rows included (re-enrolling revives them).
 * A first enrollment inserts with ON CONFLICT DO NOTHING; one that loses a race with another
 * re-reads the winner's row and goes on as a reuse, so concurrent first enrollments converge.
 */
async function bindMachine(tx: Queryable, site: SiteRef, input: EnrollRequest, ip: string): Promise<EnrollOutcome> {
  const tenantId = site.tenantId;
  for (let attempt = 0; attempt < 3; attempt++) {
    const [m] = await tx.query<Omit<ExistingMachine, "status">>(
      "select id, site_id, hostname, public_key, labels, enrollment_state, deleted_at from machines where tenant_id = $1 and machine_uid = $2 for update",
      [tenantId, input.machine_uid]);
    if (m) {
      // Read after the lock, in a statement of its own: one that had to wait for the lock would
      // otherwise see the presence of before the wait (only the locked row is read again).
      const [p] = await tx.query<{ status: ExistingMachine["status"] }>("select status from machine_presence where machine_id = $1", [m.id]);
      return existingMachine(tx, site, input, ip, { ...m, status: p?.status ?? "offline" });
    }
    const id = Bun.randomUUIDv7();
    const inserted = await tx.query(
      `insert into machines (id, tenant_id, site_id, machine_uid, hostname, labels, public_key)
       values ($1, $2, $3, $4, $5, $6::text::jsonb, $7)
       on conflict (tenant_id, machine_uid) do nothing returning id`,
      [id, tenantId, site.id, input.machine_uid, input.hostname, JSON.stringify(mergeLabels(site, null, input.labels)), input.public_key]);
    if (inserted.length === 0) continue; // another enrollment of this machine_uid won the insert: re-read its row
    const key = await mintAgentKey(tx, tenantId, id, null);
    return { kind: "new", tenantId, site, machineId: id, key: key.key, keyId: key.id, enrollmentState: "active", revived: false, revokedKeys: 0, revokedGrants: 0 };
  }
  throw new Error("enrollment did not converge on one machine row");
}

async function existingMachine(tx: Queryable, site: SiteRef, input: EnrollRequest, ip: string, m: ExistingMachine): Promise<EnrollOutcome> {
  const tenantId = site.tenantId;
  // No silent move between sites: that takes an admin, who removes the machine at its old site
  // first (as the 409 says); a removed machine enrolling at another site comes back there.
  const moving = m.site_id !== site.id;
  if (moving && m.site_id !== null && m.deleted_at === null) return { kind: "site_conflict", tenantId, site, machineId: m.id, boundSiteId: m.site_id };

  // A claimant an admin rejected stays rejected for this machine (the machine's own registered key excepted).
  if (input.public_key !== m.public_key) {
    const rejected = await tx.query("select 1 from enrollment_requests where machine_id = $1 and status = 'rejected' and public_key = $2 limit 1", [m.id, input.public_key]);
    if (rejected.length > 0) return { kind: "rejected", reason: "claimant_rejected", tenantId, site, machineId: m.id };
  }

  // Moving to another site: the old site's company and site labels give way to the new site's.
  const had = labelsOf(m.labels);
  const labels = mergeLabels(site, moving ? { ...had, company: "", site: "" } : had, input.labels);
  const otherHost = m.hostname.toLowerCase() !== input.hostname.toLowerCase();
  let revokedGrants = 0;
  if (m.deleted_at !== null) {
    // A claim left waiting on a removed machine neither queues this enrollment nor keeps the
    // revived machine pending; and it comes back without grants (removal took them, this makes
    // sure).
    await releasePendingClaims(tx, tenantId, [m.id]);
    revokedGrants = (await dropMachineGrants(tx, tenantId, [m.id])).length;
    m = { ...m, enrollment_state: "active" };
  }
  const [pending] = await tx.query<{ id: string }>("select id from enrollment_requests where machine_id = $1 and status = 'pending'", [m.id]);
  // The collision gate (provisional, as in the reference): the row is live under another
  // hostname, so this looks like a clone. While a claim waits, anything but the machine itself
  // joins the queue: only an admin's decision settles it.
  const looksLikeClone = (m.deleted_at === null && m.status === "online" && otherHost) || (pending !== undefined && (otherHost || input.public_key !== m.public_key));
  if (looksLikeClone) {
    // One claim waits per machine, and the admin decides the one shown. Its own claimant
    // retrying refreshes it; another claimant's enrollment leaves it as it is (202 all the same,
    // audited as competing): otherwise whoever enrolled last would replace the claim an admin
    // may be about to approve. The competing claimant retries, as agents do on a 202, and is
    // judged afresh by this gate once the waiting claim is decided. ON CONFLICT names the
    // partial index's predicate, or it cannot bind to it.
    const [request] = await tx.query<{ id: string }>(
      `insert into enrollment_requests (id, tenant_id, machine_id, site_id, hostname, labels, public_key, ip)
       values ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8)
       on conflict (machine_id) where status = 'pending' do update
         set site_id = excluded.site_id, hostname = excluded.hostname, labels = excluded.labels, ip = excluded.ip, created_at = now()
         where enrollment_requests.public_key = excluded.public_key
       returning id`,
      [crypto.randomUUID(), tenantId, m.id, site.id, input.hostname, JSON.stringify(labels), input.public_key, ip]);
    await tx.query("update machines set enrollment_state = 'pending', updated_at = now() where id = $1", [m.id]);
    // No row back: a claim of another key waits (the machine's row lock keeps it there meanwhile).
    return { kind: "collision_pending", tenantId, site, machineId: m.id, requestId: request?.id ?? pending!.id, competing: !request };
  }

  // Reuse: a re-install or re-image of the same machine. Same row, revived if removed, new
  // identity key, earlier agent keys revoked, a fresh one issued.
  await tx.query(
    `update machines set site_id = $2, hostname = $3, labels = $4::text::jsonb, public_key = $5, deleted_at = null, updated_at = now()
      where id = $1`,
    [m.id, site.id, input.hostname, JSON.stringify(labels), input.public_key]);
  const revokedKeys = await revokeMachineKeys(tx, tenantId, [m.id]);
  const key = await mintAgentKey(tx, tenantId, m.id, null);
  // The state stays as it was: 'pending' while a claim on this machine waits for an admin.
  return { kind: "reuse", tenantId, site, machineId: m.id, key: key.key, keyId: key.id, enrollmentState: m.enrollment_state, revived: m.deleted_at !== null, revokedKeys, revokedGrants };
}

/** Labels the agent gave win; then what the machine had; then the site's defaults. */
function mergeLabels(site: SiteRef, had: MachineLabels | null, given: EnrollRequest["labels"]): MachineLabels {
  const pick = (g: string | undefined, h: string | undefined, d: string) => (g ? g : h ? h : d);
  return {
    company: pick(given.company, had?.company, site.company),
    site: pick(given.site, had?.site, site.displayName),
    department: pick(given.department, had?.department, ""),
    device_type: pick(given.device_type, had?.device_type, ""),
    tags: given.tags?.length ? [...new Set(given.tags)] : had?.tags ?? [],
  };
}
