import { iso } from "../machines/rows.ts";
import type { Queryable } from "../store/store.ts";
import { installCommand } from "../install/install-script.ts";
import { keyMeta } from "./enrollment-keys.ts";

/**
 * Sites (A5, M1): a tenant's groups of machines, each with an operator-facing site code that
 * installers carry (unique within the tenant), a display name, and the company label machines
 * enrolled there get by default.
 */
export interface SiteRow {
  id: string;
  tenant_id: string;
  site_code: string;
  display_name: string;
  company: string;
  created_at: Date | string;
  key_version: number | null;
  key_fingerprint: string | null;
  key_created_at: Date | string | null;
}

const SELECT = `select s.id, s.tenant_id, s.site_code, s.display_name, s.company, s.created_at,
       k.version as key_version, k.fingerprint as key_fingerprint, k.created_at as key_created_at
  from sites s left join site_enrollment_keys k on k.site_id = s.id and k.active`;

/** Shown in place of the key, which exists in plaintext only in the rotation's response. */
export const KEY_PLACEHOLDER = "<cek_…>";


/** The active enrollment key's metadata, or null before the first rotation. */
export function siteKeyMeta(s: SiteRow) {
  return s.key_version === null ? null : keyMeta(s.id, Number(s.key_version), s.key_fingerprint!, s.key_created_at!);
}

export function publicSite(s: SiteRow, serverUrl: string) {
  return {
    id: s.id,
    site_code: s.site_code,
    display_name: s.display_name,
    company: s.company,
    created_at: iso(s.created_at),
    enrollment_key: siteKeyMeta(s),
    install_command: installCommand(serverUrl, s.site_code, KEY_PLACEHOLDER),
  };
}

export class SiteCodeTakenError extends Error {}

export async function createSite(db: Queryable, tenantId: string, input: { siteCode: string; displayName: string; company: string }): Promise<SiteRow> {
  const id = Bun.randomUUIDv7();
  const rows = await db.query(
    "insert into sites (id, tenant_id, site_code, display_name, company) values ($1, $2, $3, $4, $5) on conflict (tenant_id, site_code) do nothing returning id",
    [id, tenantId, input.siteCode, input.displayName, input.company]);
  if (!rows[0]) throw new SiteCodeTakenError(input.siteCode);
  return (await getSite(db, tenantId, id))!;
}

export async function listSites(db: Queryable, tenantId: string): Promise<SiteRow[]> {
  return db.query<SiteRow>(`${SELECT} where s.tenant_id = $1 order by s.site_code`, [tenantId]);
}

export async function getSite(db: Queryable, tenantId: string, id: string): Promise<SiteRow | null> {
  const [row] = await db.query<SiteRow>(`${SELECT} where s.tenant_id = $1 and s.id = $2`, [tenantId, id]);
  return row ?? null;
}
