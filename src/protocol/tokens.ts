import { z } from "zod";
import { PERMISSIONS } from "../auth/roles.ts";
import { Uuid } from "./accounts.ts";

/** Personal API tokens (A4): minting, listing, revoking. */

export const TOKEN_NAME_MAX = 100;
/** The latest a token may expire: one calendar year from now. */
export const maxTokenExpiry = (now = new Date()) => {
  const max = new Date(now);
  max.setUTCFullYear(max.getUTCFullYear() + 1);
  return max;
};

export const Scope = z.enum(PERMISSIONS, { error: (issue) => `${JSON.stringify(issue.input)} is not a permission name` });

const IsoTime = z.iso.datetime({ offset: true, error: "an ISO 8601 time, e.g. 2030-01-31T12:00:00Z" });

export const CreateTokenRequest = z.object({
  name: z.string().trim().min(1).max(TOKEN_NAME_MAX).describe("what the token is for").meta({ examples: ["nightly inventory export"] }),
  scopes: z.array(Scope).min(1).max(PERMISSIONS.length * 2).describe("permission names; each must be one your role has"),
  expires_at: IsoTime
    .refine((s) => Date.parse(s) > Date.now(), "must be in the future")
    .refine((s) => Date.parse(s) <= maxTokenExpiry().getTime(), "must be at most one year ahead")
    .describe("when the token stops working: in the future, at most one year ahead")
    .meta({ examples: ["2030-01-31T12:00:00Z"] }),
});
export type CreateTokenRequest = z.infer<typeof CreateTokenRequest>;

export const TokenMetadata = z.object({
  id: Uuid,
  name: z.string(),
  prefix: z.string().describe("the token's first characters, to tell tokens apart"),
  scopes: z.array(z.string()),
  created_at: z.string(),
  expires_at: z.string(),
  last_used_at: z.string().nullable(),
  revoked_at: z.string().nullable(),
});
export type TokenMetadata = z.infer<typeof TokenMetadata>;

export const CreatedToken = z.object({
  id: Uuid,
  name: z.string(),
  token: z.string().describe("tpat_… bearer token: shown once, never again"),
  prefix: z.string(),
  scopes: z.array(z.string()),
  expires_at: z.string(),
  created_at: z.string(),
});

export const TokenList = z.object({ tokens: z.array(TokenMetadata) });
