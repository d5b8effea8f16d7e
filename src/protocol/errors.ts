import { z } from "zod";

/** The one error envelope every HTTP error response carries (SPEC A6). */
export const ErrorEnvelope = z.object({
  detail: z.string(),
  error_code: z.string(),
  status_code: z.number().int(),
  correlation_id: z.string(),
});
export type ErrorEnvelope = z.infer<typeof ErrorEnvelope>;

export const CORRELATION_HEADER = "x-correlation-id";
