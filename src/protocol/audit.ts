import { z } from "zod";
import { IsoTime } from "./accounts.ts";

/** The audit log's query and its rows (A7). */

export const AUDIT_LIMIT_DEFAULT = 50;
export const AUDIT_LIMIT_MAX = 200;

export const AuditQuery = z.object({
  type: z.string().min(1).max(100).optional().describe("event type, e.g. auth.login"),
  actor: z.string().min(1).max(256).optional().describe("the actor's id or name"),
  target: z.string().min(1).max(256).optional().describe("the target's id"),
  outcome: z.enum(["success", "failure"]).optional(),
  from: IsoTime.optional().describe("events at or after this time"),
  to: IsoTime.optional().describe("events before this time"),
  cursor: z.string().regex(/^[0-9A-HJKMNP-TV-Z]{26}$/, "a next_cursor from a previous page").optional(),
  limit: z.coerce.number<string | number>().int().min(1).max(AUDIT_LIMIT_MAX).default(AUDIT_LIMIT_DEFAULT),
}).refine((q) => !q.from || !q.to || Date.parse(q.from) <= Date.parse(q.to), { message: "must not be before from", path: ["to"] });

export const AuditEventRow = z.object({
  id: z.string().describe("ULID; sortable"),
  at: z.string(),
  type: z.string(),
  outcome: z.enum(["success", "failure"]),
  actor_type: z.string(),
  actor_id: z.string().nullable(),
  actor_name: z.string().nullable(),
  target_type: z.string().nullable(),
  target_id: z.string().nullable(),
  ip: z.string().nullable(),
  correlation_id: z.string().nullable(),
  details: z.record(z.string(), z.unknown()),
});

export const AuditPage = z.object({
  events: z.array(AuditEventRow).describe("newest first"),
  next_cursor: z.string().nullable().describe("pass as cursor for the next page; null on the last one"),
});
