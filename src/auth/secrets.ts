import { createHash, timingSafeEqual } from "node:crypto";

/**
 * Bearer secrets: a type prefix and 32 random bytes as 64 lower-case hex. The prefix names the
 * credential plane, so a secret of one plane is recognised, and refused, on another.
 */
export const SECRET_PREFIXES = {
  session: "tss_", // login session
  apiToken: "tpat_", // personal API token
  agentKey: "cak_", // per-machine agent key
  enrollmentKey: "cek_", // per-site enrollment key
} as const;
export type SecretKind = keyof typeof SECRET_PREFIXES;

export function newSecret(kind: SecretKind): string {
  return SECRET_PREFIXES[kind] + randomHex(32);
}

/** True when `value` has the exact shape of a secret of that kind. */
export function isSecret(kind: SecretKind, value: string): boolean {
  const prefix = SECRET_PREFIXES[kind];
  return value.length === prefix.length + 64 && value.startsWith(prefix) && /^[0-9a-f]{64}$/.test(value.slice(prefix.length));
}

export function randomHex(bytes: number): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString("hex");
}

export function sha256Hex(value: string): string {
  return createHash("sha256").update(value).digest("hex");
}

/** Equality that takes the same time wherever the inputs differ. */
export function constantTimeEqual(a: string, b: string): boolean {
  const x = Buffer.from(sha256Hex(a), "hex");
  const y = Buffer.from(sha256Hex(b), "hex");
  return timingSafeEqual(x, y) && a.length === b.length;
}

/** The public fingerprint of an enrollment key: first 4 hex of its SHA-256, upper case. */
export function fingerprint(secret: string): string {
  return sha256Hex(secret).slice(0, 4).toUpperCase();
}

export const fingerprintLabel = (version: number, fp: string) => `v${version} (${fp})`;

/** The first characters of a secret, safe to show and log: enough to tell keys apart. */
export const displayPrefix = (secret: string) => secret.slice(0, secret.indexOf("_") + 1 + 8);
