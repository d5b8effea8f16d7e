import { z } from "zod";
import { Role } from "./accounts.ts";

/** The tenant's security policy (A3). */
export const Settings = z.object({
  require_totp_roles: z.array(Role).describe("roles whose users must have a second factor: without one, a login only lets them enroll it"),
  updated_at: z.string(),
});
export type Settings = z.infer<typeof Settings>;

export const UpdateSettingsRequest = z.object({
  require_totp_roles: z.array(Role).max(8).optional(),
});
