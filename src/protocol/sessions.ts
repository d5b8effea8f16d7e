import { z } from "zod";
import { IsoTime, Uuid } from "./accounts.ts";
import { Access, EndReason, SessionKind, SessionState } from "./relay.ts";

/** Request and response bodies of sessions, support codes and viewer tokens (S1–S3, S7, S8). */

export const CreateSessionRequest = z.object({ machine_id: Uuid });

export const Session = z.object({
  id: Uuid,
  kind: SessionKind,
  machine_id: Uuid.nullable(),
  hostname: z.string().nullable().describe("the machine's, or the attended agent's"),
  technician: z.string(),
  created_by: Uuid.nullable(),
  state: SessionState,
  end_reason: EndReason.nullable(),
  consent: z.enum(["not_required", "required", "granted", "denied"]),
  viewers: z.number().int().describe("viewers connected now"),
  created_at: z.string(),
  started_at: z.string().nullable(),
  ended_at: z.string().nullable(),
});

export const ListSessionsQuery = z.object({
  state: SessionState.optional(),
  live: z.enum(["true", "false"]).optional().describe("true: not ended"),
  machine_id: Uuid.optional(),
  kind: SessionKind.optional(),
  limit: z.coerce.number().int().min(1).max(500).default(50),
  before: IsoTime.optional().describe("created_at of the last row of the previous page"),
});

export const SessionEvent = z.object({
  id: z.number().int(),
  type: z.string(),
  actor: z.string().nullable(),
  details: z.record(z.string(), z.unknown()),
  at: z.string(),
});

export const ViewerTokenRequest = z.object({ access: Access.default("control") });
export const ViewerToken = z.object({
  token: z.string().describe("valid 5 minutes, for /ws/viewer?session=<id>&token=<token> of this session only"),
  token_id: z.string(),
  access: Access,
  expires_at: z.string(),
  url: z.string().describe("the viewer socket URL, token included"),
});

export const CreateSupportCodeRequest = z.object({
  expires_in_s: z.number().int().min(60).max(24 * 3600).default(20 * 60),
});
export const SupportCode = z.object({
  code: z.string().describe("6 digits, single use; shown once"),
  session_id: Uuid,
  expires_at: z.string(),
  command: z.string().describe("what the person at the machine runs"),
});
