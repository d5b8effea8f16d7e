/**
 * Argon2id (OWASP's second recommended profile: 19 MiB, 2 passes) through Bun.password, for
 * passwords and enrollment keys. Every rejection path pays one verification, so whether a
 * user, site or key exists cannot be told from the time an answer takes.
 */
const PARAMS = { algorithm: "argon2id", memoryCost: 19_456, timeCost: 2 } as const;

export const PASSWORD_MIN = 10;
export const PASSWORD_MAX = 256;

export function hashSecret(plain: string): Promise<string> {
  return Bun.password.hash(plain, PARAMS);
}

export async function verifySecret(plain: string, phc: string): Promise<boolean> {
  try {
    return await Bun.password.verify(plain, phc);
  } catch {
    return false; // a malformed hash never verifies
  }
}

// A valid Argon2id hash of a random value nobody knows, made once with the same parameters.
let equalizer: Promise<string> | null = null;

/** Costs exactly what a real verification costs, and always fails. */
export async function verifyNothing(plain: string): Promise<false> {
  equalizer ??= hashSecret(crypto.randomUUID());
  await verifySecret(plain, await equalizer);
  return false;
}
