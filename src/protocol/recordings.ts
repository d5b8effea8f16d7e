import { z } from "zod";
import { Uuid } from "./accounts.ts";

/** Response bodies and queries of the recordings area (S6). */

export const Recording = z.object({
  id: Uuid,
  session_id: Uuid,
  machine_id: Uuid.nullable(),
  channel: z.number().int().describe("the session's terminal channel"),
  cols: z.number().int().describe("terminal size when the recording started"),
  rows: z.number().int(),
  started_at: z.string(),
  ended_at: z.string().nullable().describe("null while the terminal is open"),
  bytes: z.number().int().nonnegative().describe("terminal output bytes recorded"),
  duration_s: z.number().nonnegative().nullable().describe("seconds from start to end; null while recording"),
});
export type Recording = z.infer<typeof Recording>;

export const RecordingList = z.object({ recordings: z.array(Recording).describe("oldest first") });

export const RECORDINGS_LIMIT_DEFAULT = 100;
export const RECORDINGS_LIMIT_MAX = 500;

export const MachineRecordingsQuery = z.object({
  limit: z.coerce.number<string | number>().int().min(1).max(RECORDINGS_LIMIT_MAX).default(RECORDINGS_LIMIT_DEFAULT),
  cursor: z.string().min(1).max(200).optional().describe("next_cursor of the previous page"),
});

export const RecordingPage = z.object({
  recordings: z.array(Recording).describe("newest first"),
  next_cursor: z.string().nullable().describe("pass as cursor for the next page; null on the last one"),
});
