import { z } from "zod";
import { Uuid } from "./accounts.ts";
import { Inventory } from "./agent.ts";
import { SiteCode } from "./sites.ts";
import { decodeCursor, parseQ, QueryError, SORTS } from "../machines/search.ts";

/** Request and response bodies of the machines area: enrollment, machines, agent keys, grants (M1, M2, M6, A9). */

const Label = z.string().trim().max(128);

/** What an agent may say about itself; absent labels get the site's defaults. */
export const EnrollLabels = z.object({
  company: Label.optional(),
  site: Label.optional(),
  department: Label.optional(),
  device_type: Label.optional(),
  tags: z.array(z.string().trim().min(1).max(64)).max(32).optional(),
});

export const MachineLabels = z.object({
  company: z.string(),
  site: z.string(),
  department: z.string(),
  device_type: z.string(),
  tags: z.array(z.string()),
});
export type MachineLabels = z.infer<typeof MachineLabels>;

/** Base64 (standard, padded) of a raw 32-byte Ed25519 public key. */
export const Ed25519PublicKey = z.string().length(44).refine(
  (v) => /^[A-Za-z0-9+/]{43}=$/.test(v) && Buffer.from(v, "base64").length === 32 && Buffer.from(v, "base64").toString("base64") === v,
  "base64 of a 32-byte Ed25519 public key",
);

export const EnrollRequest = z.object({
  site_code: SiteCode,
  enrollment_key: z.string().min(1).max(256).describe("the site's cek_… key"),
  machine_uid: z.string().min(1).max(128).regex(/^[\x21-\x7e]+$/, "printable ASCII, no spaces").describe("stable, opaque machine identity derived by the agent"),
  hostname: z.string().trim().min(1).max(255),
  labels: EnrollLabels.default({}),
  public_key: Ed25519PublicKey,
});
export type EnrollRequest = z.infer<typeof EnrollRequest>;

export const Disposition = z.enum(["new", "reuse", "collision_pending"]);
export const EnrollmentState = z.enum(["active", "pending"]);

export const EnrollResponse = z.object({
  machine_id: Uuid,
  key: z.string().optional().describe("cak_… agent key, returned once; absent when pending"),
  enrollment_state: EnrollmentState,
  disposition: Disposition,
});
export type EnrollResponse = z.infer<typeof EnrollResponse>;

export const PendingRequest = z.object({
  id: Uuid,
  hostname: z.string(),
  labels: MachineLabels,
  ip: z.string().nullable(),
  created_at: z.string(),
});

export const Machine = z.object({
  id: Uuid,
  hostname: z.string(),
  site_id: Uuid.nullable(),
  site_code: z.string().nullable(),
  labels: MachineLabels,
  enrollment_state: EnrollmentState,
  status: z.enum(["online", "offline"]),
  last_seen_at: z.string().nullable(),
  created_at: z.string(),
  inventory: Inventory.describe("the agent's last status report (SPEC M4); {} before the first"),
  external_ip: z.string().nullable().describe("the address the server saw the agent connect from"),
  agent_version: z.string().nullable(),
  disabled_at: z.string().nullable().describe("when an admin disabled it: its agent is kept out (close 4011) until it is enabled"),
  live_sessions: z.array(z.object({
    id: Uuid,
    kind: z.enum(["attended", "unattended", "end_user"]),
    technician: z.string().describe("who opened it"),
    state: z.string(),
    viewers: z.number().int().nonnegative().describe("viewers connected now"),
  })).describe("who is connected to it now (SPEC M5): its sessions not yet ended, oldest first"),
});
export type Machine = z.infer<typeof Machine>;

export const MachineDetail = Machine.extend({
  pending_request: PendingRequest.nullable().describe("a clone-looking enrollment waiting for approve/reject"),
});

/** GET /api/machines: search (M5), filters, sort and keyset pagination. See docs/API.md, "Searching machines". */
export const ListMachinesQuery = z.object({
  q: z.string().max(512).optional()
    .superRefine((v, ctx) => {
      if (v === undefined) return;
      try {
        parseQ(v);
      } catch (e) {
        if (!(e instanceof QueryError)) throw e;
        ctx.addIssue({ code: "custom", message: e.message });
      }
    })
    .describe('terms ANDed, each a case-insensitive substring of any attribute; "quoted phrase"; scopes host: os: user: ip: tag: site: status:'),
  site_id: Uuid.optional(),
  status: z.enum(["online", "offline"]).optional(),
  tag: z.string().min(1).max(64).optional().describe("exact tag"),
  enrollment_state: EnrollmentState.optional(),
  sort: z.enum(SORTS).optional().describe("default: hostname when q is given, else created (enrollment order)"),
  order: z.enum(["asc", "desc"]).default("asc"),
  limit: z.coerce.number().int().min(1).max(500).default(50),
  cursor: z.string().max(2048).optional()
    .refine((v) => v === undefined || decodeCursor(v) !== null, "not a cursor of this list")
    .describe("next_cursor of the previous page (same q, filters and sort)"),
});
export type ListMachinesQuery = z.infer<typeof ListMachinesQuery>;

export const MachineList = z.object({
  machines: z.array(Machine),
  next_cursor: z.string().nullable(),
});

export const BULK_DELETE_MAX = 500;
export const BulkDeleteRequest = z.object({ ids: z.array(Uuid).min(1).max(BULK_DELETE_MAX) });
export const BulkDeleteResponse = z.object({
  removed: z.array(Uuid),
  not_found: z.array(Uuid).describe("unknown, in another tenant, or already removed"),
});

export const AgentKey = z.object({
  id: Uuid,
  prefix: z.string(),
  created_at: z.string(),
  last_used_at: z.string().nullable(),
  revoked_at: z.string().nullable(),
});
export const MintedAgentKey = z.object({
  id: Uuid,
  key: z.string().describe("cak_… plaintext, shown exactly once"),
  prefix: z.string(),
  created_at: z.string(),
});

export const CreateGrantRequest = z.object({ machine_id: Uuid });
export const Grant = z.object({
  user_id: Uuid,
  machine_id: Uuid,
  hostname: z.string(),
  site_code: z.string().nullable(),
  created_at: z.string(),
});
