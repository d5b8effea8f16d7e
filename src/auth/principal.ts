import type { Permission, Role } from "./roles.ts";

/** Who is calling, once a login-plane credential (session or API token) has been verified. */
export interface Principal {
  kind: "session" | "api_token";
  /** The session's or token's id (never the secret). */
  credentialId: string;
  userId: string;
  tenantId: string;
  username: string;
  role: Role;
  /** Role permissions, narrowed by the token's scopes for an API token. */
  permissions: ReadonlySet<Permission>;
  /** Policy requires a second factor the user lacks: a session may only set one up, a token does nothing. */
  restricted: boolean;
}
