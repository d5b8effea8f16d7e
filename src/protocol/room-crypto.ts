/**
 * Signatures and end-to-end encryption for rooms (issue 6, R3 and R4), shared by the server
 * (verification and shape checks) and clients (tests, the web viewer). Only WebCrypto and
 * TextEncoder/TextDecoder, so it runs unchanged in Bun and in browsers: no node: imports, no
 * Buffer. docs/PROTOCOL.md ("Rooms: signatures and end-to-end encryption") gives the byte
 * formats for anyone writing another client.
 *
 *   signed rooms:    Ed25519 over canonicalMessage(room_id, client_id, sender, body, ts)
 *   room keys:       32 random bytes per (room, epoch), sealed to each member's X25519 key with
 *                    ephemeral X25519 + HKDF-SHA256 + AES-256-GCM, bound to (room, epoch, member)
 *   message bodies:  AES-256-GCM under the room key, AAD bound to (room, epoch)
 */

export class RoomCryptoError extends Error {
  override name = "RoomCryptoError";
}

type Bytes = Uint8Array<ArrayBuffer>;

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const DECODE = new Int16Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) DECODE[ALPHABET.charCodeAt(i)] = i;

/**
 * base64url (RFC 4648 §5) without padding. decode is strict so every byte string has exactly
 * one accepted text: no padding, no whitespace, no standard-base64 `+/`, no length ≡ 1 (mod 4),
 * and the unused low bits of the last character must be zero (otherwise "AB" and "AA" would
 * both decode to [0], making signatures and ciphertexts malleable in their text form).
 */
export const b64url = {
  encode(bytes: Uint8Array): string {
    let out = "";
    let i = 0;
    for (; i + 2 < bytes.length; i += 3) {
      const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
      out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]! + ALPHABET[n & 63]!;
    }
    const rest = bytes.length - i;
    if (rest === 1) {
      const n = bytes[i]! << 16;
      out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]!;
    } else if (rest === 2) {
      const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
      out += ALPHABET[n >> 18]! + ALPHABET[(n >> 12) & 63]! + ALPHABET[(n >> 6) & 63]!;
    }
    return out;
  },

  decode(text: string): Bytes {
    if (typeof text !== "string") throw new RoomCryptoError("base64url: not a string");
    if (text.length % 4 === 1) throw new RoomCryptoError("base64url: bad length");
    const out = new Uint8Array(Math.floor((text.length * 3) / 4));
    let bits = 0;
    let acc = 0;
    let o = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      const v = c < 128 ? DECODE[c]! : -1;
      if (v < 0) throw new RoomCryptoError("base64url: invalid character");
      acc = ((acc << 6) | v) & 0xffff;
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out[o++] = (acc >> bits) & 0xff;
      }
    }
    if ((acc & ((1 << bits) - 1)) !== 0) throw new RoomCryptoError("base64url: non-canonical trailing bits");
    return out;
  },
};

/** decode without throwing, for the shape checks and verifyMessage. */
function tryDecode(text: string): Bytes | null {
  try {
    return b64url.decode(text);
  } catch {
    return null;
  }
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

function concat(...parts: Uint8Array[]): Bytes {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Integers only: JSON renders every safe integer the same way in every language, floats not. */
function checkInteger(name: string, n: number, min: number): void {
  if (!Number.isSafeInteger(n) || n < min) throw new RoomCryptoError(`${name} must be an integer ≥ ${min}`);
}

// ---- signed rooms (R3) ----

export interface MessageFields {
  room_id: string;
  client_id: string;
  sender: string;
  body: string;
  ts: number;
}

const MESSAGE_TAG = "tether.room.message.v1";
export const PUBLIC_KEY_BYTES = 32;
export const SIGNATURE_BYTES = 64;

/**
 * The signed bytes: UTF-8 of JSON.stringify([tag, room_id, client_id, sender, body, ts]). A JSON
 * array rather than concatenation so no field can bleed into the next; the tag keeps a message
 * signature from ever being valid as any other Tether signature. Throws RoomCryptoError unless
 * ts is a safe integer (≥ 0).
 */
export function canonicalMessage(m: MessageFields): Bytes {
  checkInteger("ts", m.ts, 0);
  for (const k of ["room_id", "client_id", "sender", "body"] as const) {
    if (typeof m[k] !== "string") throw new RoomCryptoError(`${k} must be a string`);
  }
  return utf8.encode(JSON.stringify([MESSAGE_TAG, m.room_id, m.client_id, m.sender, m.body, m.ts]));
}

/** Extractable so exportPrivateKey can persist it. */
export async function generateSigningKeyPair(): Promise<{ publicKey: string; privateKey: CryptoKey }> {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return { publicKey: b64url.encode(raw), privateKey: pair.privateKey };
}

export async function signMessage(privateKey: CryptoKey, m: MessageFields): Promise<string> {
  const sig = await crypto.subtle.sign({ name: "Ed25519" }, privateKey, canonicalMessage(m));
  return b64url.encode(new Uint8Array(sig));
}

/** Never throws: a malformed key, signature or message is simply not a valid signature. */
export async function verifyMessage(publicKey: string, m: MessageFields, signature: string): Promise<boolean> {
  try {
    const pub = tryDecode(publicKey);
    const sig = tryDecode(signature);
    if (pub?.length !== PUBLIC_KEY_BYTES || sig?.length !== SIGNATURE_BYTES) return false;
    const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, sig, canonicalMessage(m));
  } catch {
    return false;
  }
}

/** An Ed25519 or X25519 public key: base64url of exactly 32 bytes. */
export function isPublicKey(text: string): boolean {
  return typeof text === "string" && tryDecode(text)?.length === PUBLIC_KEY_BYTES;
}

// ---- end-to-end rooms (R4) ----

export const ROOM_KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
/** ephemeral public key (32) || iv (12) || AES-GCM(room key) (32) + tag (16) */
export const SEALED_KEY_BYTES = PUBLIC_KEY_BYTES + IV_BYTES + ROOM_KEY_BYTES + TAG_BYTES;
export const MIN_CIPHERTEXT_BYTES = IV_BYTES + TAG_BYTES;

export interface KeyContext {
  room_id: string;
  epoch: number;
  member: string;
}

export interface BodyContext {
  room_id: string;
  epoch: number;
}

/** Extractable: exportPrivateKey needs it, and openRoomKey reads the public half from the JWK. */
export async function generateKexKeyPair(): Promise<{ publicKey: string; privateKey: CryptoKey }> {
  const pair = (await crypto.subtle.generateKey({ name: "X25519" }, true, ["deriveBits"])) as CryptoKeyPair;
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return { publicKey: b64url.encode(raw), privateKey: pair.privateKey };
}

export function generateRoomKey(): Bytes {
  return crypto.getRandomValues(new Uint8Array(ROOM_KEY_BYTES));
}

function keyInfo(ctx: KeyContext): Bytes {
  checkInteger("epoch", ctx.epoch, 0);
  return utf8.encode(JSON.stringify(["tether.room.key.v1", ctx.room_id, ctx.epoch, ctx.member]));
}

function bodyAad(ctx: BodyContext): Bytes {
  checkInteger("epoch", ctx.epoch, 0);
  return utf8.encode(JSON.stringify(["tether.room.body.v1", ctx.room_id, ctx.epoch]));
}

/**
 * The AES-256-GCM key wrapping a room key for one member. Both public keys go into the salt
 * and (room, epoch, member) into the info, so a sealed key only opens for the key pair it was
 * made for and only in the context it was made for: the server cannot replay a member's old
 * sealed key as a later epoch's, or hand one member's sealed key to another.
 */
async function wrappingKey(shared: ArrayBuffer, ephemeralPub: Bytes, recipientPub: Bytes, ctx: KeyContext): Promise<CryptoKey> {
  // X25519 of a low-order point is all zeros; WebCrypto should refuse it, but do not rely on it.
  if (new Uint8Array(shared).every((b) => b === 0)) throw new RoomCryptoError("degenerate shared secret");
  const ikm = await crypto.subtle.importKey("raw", shared, "HKDF", false, ["deriveKey"]);
  return crypto.subtle.deriveKey(
    { name: "HKDF", hash: "SHA-256", salt: concat(ephemeralPub, recipientPub), info: keyInfo(ctx) },
    ikm,
    { name: "AES-GCM", length: 256 },
    false,
    ["encrypt", "decrypt"],
  );
}

export async function sealRoomKey(roomKey: Uint8Array, recipientPublicKey: string, ctx: KeyContext): Promise<string> {
  if (roomKey.length !== ROOM_KEY_BYTES) throw new RoomCryptoError("room key must be 32 bytes");
  const recipientPub = tryDecode(recipientPublicKey);
  if (recipientPub?.length !== PUBLIC_KEY_BYTES) throw new RoomCryptoError("malformed recipient public key");
  try {
    const recipient = await crypto.subtle.importKey("raw", recipientPub, { name: "X25519" }, false, []);
    const ephemeral = (await crypto.subtle.generateKey({ name: "X25519" }, false, ["deriveBits"])) as CryptoKeyPair;
    const ephemeralPub = new Uint8Array(await crypto.subtle.exportKey("raw", ephemeral.publicKey));
    const shared = await crypto.subtle.deriveBits({ name: "X25519", public: recipient }, ephemeral.privateKey, 256);
    const key = await wrappingKey(shared, ephemeralPub, recipientPub, ctx);
    const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
    const ct = new Uint8Array(await crypto.subtle.encrypt({ name: "AES-GCM", iv }, key, new Uint8Array(roomKey)));
    return b64url.encode(concat(ephemeralPub, iv, ct));
  } catch (e) {
    throw e instanceof RoomCryptoError ? e : new RoomCryptoError("cannot seal room key", { cause: e });
  }
}

/**
 * Throws RoomCryptoError for a wrong key, a tampered sealed key or a different context. The
 * recipient's public key (part of the salt) is read from the private key's JWK, so the key
 * must be extractable (those from generateKexKeyPair and importKexKey are).
 */
export async function openRoomKey(sealed: string, privateKey: CryptoKey, ctx: KeyContext): Promise<Bytes> {
  const bytes = tryDecode(sealed);
  if (bytes?.length !== SEALED_KEY_BYTES) throw new RoomCryptoError("malformed sealed key");
  try {
    const jwk = await crypto.subtle.exportKey("jwk", privateKey);
    if (jwk.crv !== "X25519" || typeof jwk.x !== "string") throw new RoomCryptoError("not an X25519 private key");
    const recipientPub = b64url.decode(jwk.x);
    const ephemeralPub = bytes.subarray(0, PUBLIC_KEY_BYTES);
    const iv = bytes.subarray(PUBLIC_KEY_BYTES, PUBLIC_KEY_BYTES + IV_BYTES);
    const ct = bytes.subarray(PUBLIC_KEY_BYTES + IV_BYTES);
    const ephemeral = await crypto.subtle.importKey("raw", ephemeralPub, { name: "X25519" }, false, []);
    const shared = await crypto.subtle.deriveBits({ name: "X25519", public: ephemeral }, privateKey, 256);
    const key = await wrappingKey(shared, ephemeralPub, recipientPub, ctx);
    return new Uint8Array(await crypto.subtle.decrypt({ name: "AES-GCM", iv }, key, ct));
  } catch (e) {
    throw e instanceof RoomCryptoError ? e : new RoomCryptoError("cannot open sealed room key", { cause: e });
  }
}

export function isSealedKey(text: string): boolean {
  return typeof text === "string" && tryDecode(text)?.length === SEALED_KEY_BYTES;
}

async function bodyKey(roomKey: Uint8Array): Promise<CryptoKey> {
  if (roomKey.length !== ROOM_KEY_BYTES) throw new RoomCryptoError("room key must be 32 bytes");
  return crypto.subtle.importKey("raw", new Uint8Array(roomKey), "AES-GCM", false, ["encrypt", "decrypt"]);
}

export async function encryptBody(roomKey: Uint8Array, plaintext: string, ctx: BodyContext): Promise<string> {
  const key = await bodyKey(roomKey);
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const ct = await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: bodyAad(ctx) }, key, utf8.encode(plaintext));
  return b64url.encode(concat(iv, new Uint8Array(ct)));
}

/** Throws RoomCryptoError for a wrong key or epoch, another room, or any tampering. */
export async function decryptBody(roomKey: Uint8Array, body: string, ctx: BodyContext): Promise<string> {
  const bytes = tryDecode(body);
  if (bytes === null || bytes.length < MIN_CIPHERTEXT_BYTES) throw new RoomCryptoError("malformed ciphertext");
  const key = await bodyKey(roomKey);
  const aad = bodyAad(ctx);
  try {
    const iv = bytes.subarray(0, IV_BYTES);
    const pt = await crypto.subtle.decrypt({ name: "AES-GCM", iv, additionalData: aad }, key, bytes.subarray(IV_BYTES));
    return utf8Strict.decode(pt);
  } catch (e) {
    throw new RoomCryptoError("cannot decrypt message body", { cause: e });
  }
}

/** All the server can check without the key: base64url of at least iv + tag. */
export function isCiphertext(body: string): boolean {
  const bytes = typeof body === "string" ? tryDecode(body) : null;
  return bytes !== null && bytes.length >= MIN_CIPHERTEXT_BYTES;
}

// ---- persisting identities ----

export async function exportPrivateKey(key: CryptoKey): Promise<string> {
  try {
    return b64url.encode(new Uint8Array(await crypto.subtle.exportKey("pkcs8", key)));
  } catch (e) {
    throw new RoomCryptoError("cannot export private key", { cause: e });
  }
}

async function importPkcs8(pkcs8: string, name: "Ed25519" | "X25519", usages: KeyUsage[]): Promise<CryptoKey> {
  try {
    // Extractable: openRoomKey needs the X25519 public half, and clients may re-export.
    return await crypto.subtle.importKey("pkcs8", b64url.decode(pkcs8), { name }, true, usages);
  } catch (e) {
    throw new RoomCryptoError(`cannot import ${name} private key`, { cause: e });
  }
}

export async function importSigningKey(pkcs8: string): Promise<CryptoKey> {
  return importPkcs8(pkcs8, "Ed25519", ["sign"]);
}

export async function importKexKey(pkcs8: string): Promise<CryptoKey> {
  return importPkcs8(pkcs8, "X25519", ["deriveBits"]);
}
