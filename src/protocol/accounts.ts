import { z } from "zod";
import { PASSWORD_MAX, PASSWORD_MIN } from "../auth/passwords.ts";
import { ROLES } from "../auth/roles.ts";

/** Request and response bodies of the accounts area: login, the caller, users. */

export const Username = z.string().trim().min(1).max(64).regex(/^[A-Za-z0-9._@-]+$/, "letters, digits, . _ @ - only");
export const Password = z.string().min(PASSWORD_MIN, `at least ${PASSWORD_MIN} characters`).max(PASSWORD_MAX);
export const Role = z.enum(ROLES);
export const Uuid = z.uuid();
/**
 * An ISO 8601 time with an offset, of the years 1 to 9999 (UTC) that PostgreSQL reads back: it
 * has no year 0, and the ISO text of a Date past 9999 (`+010000-…`) is not one it reads.
 */
export const IsoTime = z.iso.datetime({ offset: true, error: "an ISO 8601 time, e.g. 2030-01-31T12:00:00Z" })
  .refine((s) => {
    const year = new Date(s).getUTCFullYear();
    return year >= 1 && year <= 9999;
  }, "must be within the years 1 to 9999");

export const LoginRequest = z.object({
  username: z.string().min(1).max(256),
  password: z.string().min(1).max(PASSWORD_MAX),
  totp_code: z.string().regex(/^\d{6}$/, "six digits").optional(),
  recovery_code: z.string().min(1).max(64).optional(),
});

export const User = z.object({
  id: Uuid,
  username: z.string(),
  display_name: z.string(),
  role: Role,
  disabled: z.boolean(),
  totp_enabled: z.boolean(),
  created_at: z.string(),
});
export type User = z.infer<typeof User>;

export const LoginResponse = z.object({
  token: z.string().describe("tss_… bearer token for API clients; browsers get the same in an HttpOnly cookie"),
  expires_at: z.string(),
  restricted: z.boolean().describe("true: the role requires a second factor the user lacks; only /api/me/totp works"),
  user: User,
});

export const CreateUserRequest = z.object({
  username: Username,
  display_name: z.string().trim().min(1).max(128).optional(),
  role: Role,
  password: Password,
});
export const UpdateUserRequest = z.object({
  display_name: z.string().trim().min(1).max(128).optional(),
  role: Role.optional(),
  disabled: z.boolean().optional(),
});
export const ResetPasswordRequest = z.object({ password: Password });

export const TotpEnrollResponse = z.object({ secret: z.string(), otpauth_uri: z.string() });
export const TotpConfirmRequest = z.object({ code: z.string().regex(/^\d{6}$/, "six digits") });
export const TotpConfirmResponse = z.object({ recovery_codes: z.array(z.string()).describe("shown once; each works once") });
export const TotpDisableRequest = z.object({ password: z.string().min(1).max(PASSWORD_MAX) });
