/**
 * Roles and what they may do. A permission is also an API-token scope: a token acts with the
 * permissions its user's role has AND its scopes name. The matrix is documented in
 * docs/PERMISSIONS.md; a test keeps the two in step.
 */
export const ROLES = ["admin", "technician", "auditor", "end_user"] as const;
export type Role = (typeof ROLES)[number];

export const PERMISSIONS = [
  "users:read",
  "users:write",
  "sites:read",
  "sites:write",
  "machines:read",
  "machines:write",
  "agent_keys:read",
  "agent_keys:write",
  "grants:write",
  "audit:read",
  "settings:read",
  "settings:write",
  "sessions:read",
  "sessions:write",
  "support_codes:write",
  "recordings:read",
  "rooms:read",
  "rooms:write",
  "actors:read",
] as const;
export type Permission = (typeof PERMISSIONS)[number];

const ALL = new Set<Permission>(PERMISSIONS);

export const ROLE_PERMISSIONS: Record<Role, ReadonlySet<Permission>> = {
  admin: ALL,
  technician: new Set<Permission>(["sites:read", "machines:read", "sessions:read", "sessions:write", "support_codes:write", "recordings:read", "rooms:read", "rooms:write"]),
  auditor: new Set<Permission>(["users:read", "sites:read", "machines:read", "agent_keys:read", "audit:read", "settings:read", "sessions:read", "recordings:read", "rooms:read", "actors:read"]),
  // Deny by default: only the machines granted to them, and their own sessions (filtered at the query).
  end_user: new Set<Permission>(["machines:read", "sessions:read", "sessions:write", "rooms:read", "rooms:write"]),
};

export function isPermission(value: string): value is Permission {
  return (ALL as Set<string>).has(value);
}
