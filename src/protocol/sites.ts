import { z } from "zod";
import { Uuid } from "./accounts.ts";

/** Request and response bodies of the sites area: sites and their enrollment keys (M1, A5). */

/** Operator-facing and not secret (it is typed into installers): letters, digits, `.`, `_`, `-`. */
export const SiteCode = z.string().trim().min(1).max(64).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, "letters, digits, . _ - only, starting with a letter or digit");

export const CreateSiteRequest = z.object({
  site_code: SiteCode,
  display_name: z.string().trim().min(1).max(128),
  company: z.string().trim().max(128).default(""),
});

export const EnrollmentKeyMeta = z.object({
  site_id: Uuid,
  version: z.number().int(),
  fingerprint: z.string().describe("first 4 hex of the key's SHA-256, upper case"),
  fingerprint_label: z.string().describe('"vN (XXXX)"'),
  active: z.boolean(),
  created_at: z.string(),
});
export type EnrollmentKeyMeta = z.infer<typeof EnrollmentKeyMeta>;

export const Site = z.object({
  id: Uuid,
  site_code: z.string(),
  display_name: z.string(),
  company: z.string(),
  created_at: z.string(),
  enrollment_key: EnrollmentKeyMeta.nullable().describe("the active key's metadata; null until the first rotation"),
  install_command: z.string().describe("the one-line agent install, with <cek_…> in place of the key (shown only when rotated)"),
});
export type Site = z.infer<typeof Site>;

export const RotatedEnrollmentKey = z.object({
  site_id: Uuid,
  key: z.string().describe("cek_… plaintext, shown exactly once"),
  version: z.number().int(),
  fingerprint: z.string(),
  fingerprint_label: z.string(),
  install_command: z.string().describe("the one-line agent install with this key in it, shown exactly once"),
});
