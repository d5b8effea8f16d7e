import { createPublicKey, verify } from "node:crypto";

/**
 * Ed25519 checks with node:crypto, on the calling thread: what the verifier's worker runs
 * (ed25519-worker.ts), and its fallback. A raw public key is 32 bytes; an Ed25519 signature 64.
 */
export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

/** DER of SubjectPublicKeyInfo for Ed25519 (RFC 8410), up to the raw key's 32 bytes. */
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

/** False for anything that is not a valid signature by that key, malformed input included; never throws. */
export function verifyEd25519Now(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.byteLength !== PUBLIC_KEY_BYTES || signature.byteLength !== SIGNATURE_BYTES) return false;
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, publicKey]), format: "der", type: "spki" });
    return verify(null, message, key, signature);
  } catch {
    return false;
  }
}

/** A signature to check: a raw public key, the message, the signature. */
export interface Check {
  publicKey: Uint8Array;
  message: Uint8Array;
  signature: Uint8Array;
}

/**
 * Checks packed into one buffer, to go to the verifier's thread as one transfer (not one
 * structured clone per byte array): each is the key (32 bytes), the message's length (u32, big
 * endian), the message, the signature (64 bytes). A key or signature of another size throws:
 * it would shift every check after it.
 */
export function packChecks(checks: readonly Check[]): ArrayBuffer {
  let size = 0;
  for (const c of checks) {
    if (c.publicKey.byteLength !== PUBLIC_KEY_BYTES || c.signature.byteLength !== SIGNATURE_BYTES) throw new Error("packChecks: a key of 32 bytes and a signature of 64 only");
    size += PUBLIC_KEY_BYTES + 4 + c.message.byteLength + SIGNATURE_BYTES;
  }
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  let at = 0;
  for (const c of checks) {
    bytes.set(c.publicKey, at);
    view.setUint32(at + PUBLIC_KEY_BYTES, c.message.byteLength);
    bytes.set(c.message, at + PUBLIC_KEY_BYTES + 4);
    bytes.set(c.signature, at + PUBLIC_KEY_BYTES + 4 + c.message.byteLength);
    at += PUBLIC_KEY_BYTES + 4 + c.message.byteLength + SIGNATURE_BYTES;
  }
  return bytes.buffer;
}

/** `count` checks out of `packChecks`' buffer, as views into it. */
export function unpackChecks(data: ArrayBuffer, count: number): Check[] {
  const bytes = new Uint8Array(data);
  const view = new DataView(data);
  const checks: Check[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    const length = view.getUint32(at + PUBLIC_KEY_BYTES);
    const m = at + PUBLIC_KEY_BYTES + 4;
    checks.push({ publicKey: bytes.subarray(at, at + PUBLIC_KEY_BYTES), message: bytes.subarray(m, m + length), signature: bytes.subarray(m + length, m + length + SIGNATURE_BYTES) });
    at = m + length + SIGNATURE_BYTES;
  }
  return checks;
}
