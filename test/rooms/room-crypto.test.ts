import { describe, expect, test } from "bun:test";
import {
  b64url,
  canonicalMessage,
  decryptBody,
  encryptBody,
  exportPrivateKey,
  generateKexKeyPair,
  generateRoomKey,
  generateSigningKeyPair,
  importKexKey,
  importSigningKey,
  isCiphertext,
  isPublicKey,
  isSealedKey,
  openRoomKey,
  RoomCryptoError,
  sealRoomKey,
  signMessage,
  verifyMessage,
  type KeyContext,
  type MessageFields,
} from "../../src/protocol/room-crypto.ts";

/**
 * The room crypto library (issue 6, R3 and R4): base64url, signed messages, sealed room keys
 * and encrypted bodies. The "vector" tests use values made by an independent implementation
 * (Python `cryptography`) from the byte formats in docs/PROTOCOL.md, so a client written from
 * the document interoperates with this one.
 */

const text = (s: string) => new TextEncoder().encode(s);
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

/** Flip bits (default the lowest) of byte i of a base64url value. */
function flip(value: string, i: number, mask = 0x01): string {
  const bytes = b64url.decode(value);
  bytes[i]! ^= mask;
  return b64url.encode(bytes);
}

async function rejects(p: Promise<unknown>): Promise<void> {
  let caught: unknown;
  try {
    await p;
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(RoomCryptoError);
}

const message: MessageFields = {
  room_id: "room-1",
  client_id: "client-1",
  sender: "user-1",
  body: 'hello, wörld "quoted"\n',
  ts: 1700000000000,
};

describe("b64url", () => {
  test("matches the RFC 4648 vectors, unpadded", () => {
    const vectors: [string, string][] = [
      ["", ""],
      ["f", "Zg"],
      ["fo", "Zm8"],
      ["foo", "Zm9v"],
      ["foob", "Zm9vYg"],
      ["fooba", "Zm9vYmE"],
      ["foobar", "Zm9vYmFy"],
    ];
    for (const [plain, encoded] of vectors) {
      expect(b64url.encode(text(plain))).toBe(encoded);
      expect(b64url.decode(encoded)).toEqual(text(plain));
    }
    // The two characters that differ from standard base64.
    expect(b64url.encode(new Uint8Array([0xfb, 0xff, 0xbf]))).toBe("-_-_");
    expect(b64url.encode(new Uint8Array(Array.from({ length: 20 }, (_, i) => i)))).toBe("AAECAwQFBgcICQoLDA0ODxAREhM");
  });

  test("round-trips random bytes of every length 0..100", () => {
    for (let n = 0; n <= 100; n++) {
      const bytes = crypto.getRandomValues(new Uint8Array(n));
      const encoded = b64url.encode(bytes);
      expect(encoded).toMatch(/^[A-Za-z0-9_-]*$/);
      expect(encoded.length).toBe(Math.ceil((n * 4) / 3));
      expect(b64url.decode(encoded)).toEqual(bytes);
    }
  });

  test("decode rejects padding, foreign characters, bad lengths and non-canonical endings", () => {
    for (const bad of ["Zg==", "Zm8=", "Zm9v+", "ab/c", "ab c", "ab\nc", "Zm9v.", "é", "A", "AAAAA", "AB", "AAB"]) {
      expect(() => b64url.decode(bad)).toThrow(RoomCryptoError);
    }
    expect(b64url.decode("AA")).toEqual(new Uint8Array([0]));
  });
});

describe("signed messages", () => {
  test("canonical bytes are exactly the documented JSON", () => {
    const expected = '["tether.room.message.v1","room-1","client-1","user-1","hello, wörld \\"quoted\\"\\n",1700000000000]';
    expect(new TextDecoder().decode(canonicalMessage(message))).toBe(expected);
    expect(hex(canonicalMessage({ room_id: "r", client_id: "c", sender: "s", body: "é", ts: 0 }))).toBe(
      hex(text('["tether.room.message.v1","r","c","s","é",0]')),
    );
    // Lone surrogates are escaped by JSON.stringify, so the bytes stay well defined.
    expect(new TextDecoder().decode(canonicalMessage({ ...message, body: "\ud800" }))).toContain('"\\ud800"');
  });

  test("canonical encoding refuses a timestamp that is not a non-negative safe integer", () => {
    for (const ts of [1.5, -1, NaN, Infinity, 2 ** 53]) {
      expect(() => canonicalMessage({ ...message, ts })).toThrow(RoomCryptoError);
    }
  });

  test("sign and verify round trip", async () => {
    const { publicKey, privateKey } = await generateSigningKeyPair();
    expect(isPublicKey(publicKey)).toBe(true);
    const signature = await signMessage(privateKey, message);
    expect(b64url.decode(signature).length).toBe(64);
    expect(await verifyMessage(publicKey, message, signature)).toBe(true);
  });

  test("matches an independent Ed25519 vector (RFC 8032 test 1 key)", async () => {
    const privateKey = await importSigningKey("MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v_VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g");
    const publicKey = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const signature = "6DTtkIWRz_1rC9tECAkzazQ5yM3Oa_oFvSBh1b_5422gMZQ0sJt85oYXWiWEYziZBreNB5vXdk-XQ9XEJecFBg";
    expect(await signMessage(privateKey, message)).toBe(signature);
    expect(await verifyMessage(publicKey, message, signature)).toBe(true);
  });

  test("a signature fails if any of the five fields changes", async () => {
    const { publicKey, privateKey } = await generateSigningKeyPair();
    const signature = await signMessage(privateKey, message);
    const changed: MessageFields[] = [
      { ...message, room_id: "room-2" },
      { ...message, client_id: "client-2" },
      { ...message, sender: "user-2" },
      { ...message, body: message.body + " " },
      { ...message, ts: message.ts + 1 },
      // Shifting text between adjacent fields must not keep the signature valid.
      { ...message, room_id: "room-1client-1", client_id: "" },
    ];
    for (const m of changed) expect(await verifyMessage(publicKey, m, signature)).toBe(false);
  });

  test("a signature fails with another key", async () => {
    const alice = await generateSigningKeyPair();
    const mallory = await generateSigningKeyPair();
    const signature = await signMessage(mallory.privateKey, message);
    expect(await verifyMessage(alice.publicKey, message, signature)).toBe(false);
  });

  test("malformed keys and signatures verify false without throwing", async () => {
    const { publicKey, privateKey } = await generateSigningKeyPair();
    const signature = await signMessage(privateKey, message);
    const badKeys = ["", "AAAA", publicKey + "AA", publicKey.slice(0, -1) + "=", publicKey.replace(/./, "+"), "not a key!"];
    for (const k of badKeys) expect(await verifyMessage(k, message, signature)).toBe(false);
    const badSigs = ["", signature.slice(0, -2), signature + "AA", signature + "=", "!" + signature.slice(1), flip(signature, 0), flip(signature, 63)];
    for (const s of badSigs) expect(await verifyMessage(publicKey, message, s)).toBe(false);
    expect(await verifyMessage(publicKey, { ...message, ts: 0.5 }, signature)).toBe(false);
    expect(await verifyMessage(undefined as unknown as string, message, signature)).toBe(false);
  });

  test("signing keys survive export and import", async () => {
    const { publicKey, privateKey } = await generateSigningKeyPair();
    const restored = await importSigningKey(await exportPrivateKey(privateKey));
    expect(await verifyMessage(publicKey, message, await signMessage(restored, message))).toBe(true);
    await rejects(importSigningKey("AAAA"));
    await rejects(importSigningKey("not base64url"));
  });
});

describe("sealed room keys", () => {
  const ctx: KeyContext = { room_id: "room-1", epoch: 2, member: "member-1" };

  test("seal and open round trip", async () => {
    const { publicKey, privateKey } = await generateKexKeyPair();
    expect(isPublicKey(publicKey)).toBe(true);
    const roomKey = generateRoomKey();
    expect(roomKey.length).toBe(32);
    const sealed = await sealRoomKey(roomKey, publicKey, ctx);
    expect(isSealedKey(sealed)).toBe(true);
    expect(b64url.decode(sealed).length).toBe(92);
    expect(await openRoomKey(sealed, privateKey, ctx)).toEqual(roomKey);
    // A fresh ephemeral key and iv every time.
    expect(await sealRoomKey(roomKey, publicKey, ctx)).not.toBe(sealed);
  });

  test("opens an independently made vector (RFC 7748 keys)", async () => {
    const privateKey = await importKexKey("MC4CAQAwBQYDK2VuBCIEIHcHbQpzGKV9PBbBclGyZkXfTC-H68CZKrF3-6UduSwq");
    const sealed =
      "3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx-FG-IK09kZWZnaGlqa2xtbm9VJXTTDfWlCThtu1fIK1E9Caa_wOKeS4EKacA9JxSXMJpnO_QYkTR6BnyB61rEI0o";
    const roomKey = await openRoomKey(sealed, privateKey, ctx);
    expect(roomKey).toEqual(new Uint8Array(Array.from({ length: 32 }, (_, i) => i)));
  });

  test("opens only with the recipient's private key", async () => {
    const alice = await generateKexKeyPair();
    const bob = await generateKexKeyPair();
    const sealed = await sealRoomKey(generateRoomKey(), alice.publicKey, ctx);
    await rejects(openRoomKey(sealed, bob.privateKey, ctx));
  });

  test("opens only in the same context: room, epoch and member each matter", async () => {
    const { publicKey, privateKey } = await generateKexKeyPair();
    const sealed = await sealRoomKey(generateRoomKey(), publicKey, ctx);
    await rejects(openRoomKey(sealed, privateKey, { ...ctx, room_id: "room-2" }));
    await rejects(openRoomKey(sealed, privateKey, { ...ctx, epoch: 3 }));
    await rejects(openRoomKey(sealed, privateKey, { ...ctx, member: "member-2" }));
  });

  test("tampering with any byte fails", async () => {
    const { publicKey, privateKey } = await generateKexKeyPair();
    const sealed = await sealRoomKey(generateRoomKey(), publicKey, ctx);
    for (let i = 0; i < 92; i++) await rejects(openRoomKey(flip(sealed, i), privateKey, ctx));
    // X25519 ignores the top bit of a public key; the salt covers the raw bytes, so it still fails.
    await rejects(openRoomKey(flip(sealed, 31, 0x80), privateKey, ctx));
    await rejects(openRoomKey(sealed.slice(0, -2), privateKey, ctx));
    await rejects(openRoomKey(sealed + "A", privateKey, ctx));
  });

  test("sealing refuses a bad room key, recipient key or epoch", async () => {
    const { publicKey } = await generateKexKeyPair();
    await rejects(sealRoomKey(new Uint8Array(16), publicKey, ctx));
    await rejects(sealRoomKey(generateRoomKey(), "AAAA", ctx));
    await rejects(sealRoomKey(generateRoomKey(), b64url.encode(new Uint8Array(32)), ctx)); // low-order point
    await rejects(sealRoomKey(generateRoomKey(), publicKey, { ...ctx, epoch: -1 }));
    await rejects(sealRoomKey(generateRoomKey(), publicKey, { ...ctx, epoch: 1.5 }));
  });

  test("key-exchange keys survive export and import", async () => {
    const { publicKey, privateKey } = await generateKexKeyPair();
    const restored = await importKexKey(await exportPrivateKey(privateKey));
    const roomKey = generateRoomKey();
    expect(await openRoomKey(await sealRoomKey(roomKey, publicKey, ctx), restored, ctx)).toEqual(roomKey);
    // An Ed25519 key is not a key-exchange key.
    const signing = await generateSigningKeyPair();
    await rejects(importKexKey(await exportPrivateKey(signing.privateKey)));
  });
});

describe("encrypted bodies", () => {
  const ctx = { room_id: "room-1", epoch: 2 };

  test("encrypt and decrypt round trip", async () => {
    const roomKey = generateRoomKey();
    for (const plaintext of ["", "hi", "snow ☃ and emoji 🎉", "x".repeat(100_000)]) {
      const body = await encryptBody(roomKey, plaintext, ctx);
      expect(isCiphertext(body)).toBe(true);
      expect(b64url.decode(body).length).toBe(12 + new TextEncoder().encode(plaintext).length + 16);
      expect(await decryptBody(roomKey, body, ctx)).toBe(plaintext);
    }
  });

  test("decrypts an independently made vector", async () => {
    const roomKey = new Uint8Array(Array.from({ length: 32 }, (_, i) => i));
    expect(await decryptBody(roomKey, "yMnKy8zNzs_Q0dLTYh0CqeO428Lsv7DC_F3K3oTBZw4hW3S4ZG0", ctx)).toBe("secret ☃");
  });

  test("tampering with any byte fails", async () => {
    const roomKey = generateRoomKey();
    const body = await encryptBody(roomKey, "tamper me", ctx);
    const n = b64url.decode(body).length;
    for (let i = 0; i < n; i++) await rejects(decryptBody(roomKey, flip(body, i), ctx));
    await rejects(decryptBody(roomKey, body.slice(0, -4), ctx));
  });

  test("the body is bound to its room and epoch", async () => {
    const roomKey = generateRoomKey();
    const body = await encryptBody(roomKey, "bound", ctx);
    await rejects(decryptBody(roomKey, body, { ...ctx, room_id: "room-2" }));
    await rejects(decryptBody(roomKey, body, { ...ctx, epoch: 1 }));
    await rejects(decryptBody(generateRoomKey(), body, ctx));
  });

  test("a removed member holding the epoch-1 key cannot read an epoch-2 body", async () => {
    const owner = await generateKexKeyPair();
    const removed = await generateKexKeyPair();
    const epoch1 = generateRoomKey();
    const sealedForRemoved = await sealRoomKey(epoch1, removed.publicKey, { room_id: "room-1", epoch: 1, member: "removed" });
    const oldKey = await openRoomKey(sealedForRemoved, removed.privateKey, { room_id: "room-1", epoch: 1, member: "removed" });
    expect(await decryptBody(oldKey, await encryptBody(epoch1, "before", { room_id: "room-1", epoch: 1 }), { room_id: "room-1", epoch: 1 })).toBe("before");

    // Rotation: a new key, sealed only to the remaining members.
    const epoch2 = generateRoomKey();
    const sealedForOwner = await sealRoomKey(epoch2, owner.publicKey, { room_id: "room-1", epoch: 2, member: "owner" });
    const body = await encryptBody(epoch2, "after", { room_id: "room-1", epoch: 2 });
    expect(await decryptBody(await openRoomKey(sealedForOwner, owner.privateKey, { room_id: "room-1", epoch: 2, member: "owner" }), body, { room_id: "room-1", epoch: 2 })).toBe("after");
    await rejects(decryptBody(oldKey, body, { room_id: "room-1", epoch: 2 }));
    await rejects(decryptBody(oldKey, body, { room_id: "room-1", epoch: 1 }));
    // Nor can the removed member open the owner's sealed epoch-2 key, in any context.
    await rejects(openRoomKey(sealedForOwner, removed.privateKey, { room_id: "room-1", epoch: 2, member: "owner" }));
    await rejects(openRoomKey(sealedForOwner, removed.privateKey, { room_id: "room-1", epoch: 2, member: "removed" }));
  });

  test("refuses a room key that is not 32 bytes and malformed bodies", async () => {
    await rejects(encryptBody(new Uint8Array(16), "x", ctx));
    await rejects(decryptBody(new Uint8Array(16), await encryptBody(generateRoomKey(), "x", ctx), ctx));
    for (const bad of ["", "AAAA", "not base64!", b64url.encode(new Uint8Array(27))]) await rejects(decryptBody(generateRoomKey(), bad, ctx));
  });
});

describe("shape checks", () => {
  test("isPublicKey", async () => {
    expect(isPublicKey((await generateSigningKeyPair()).publicKey)).toBe(true);
    expect(isPublicKey((await generateKexKeyPair()).publicKey)).toBe(true);
    expect(isPublicKey(b64url.encode(new Uint8Array(32)))).toBe(true);
    const good = b64url.encode(crypto.getRandomValues(new Uint8Array(32)));
    for (const bad of ["", b64url.encode(new Uint8Array(31)), b64url.encode(new Uint8Array(33)), good + "=", good.replace(/^./, "+"), good.replace(/^./, "/"), ` ${good}`]) {
      expect(isPublicKey(bad)).toBe(false);
    }
    expect(isPublicKey(42 as unknown as string)).toBe(false);
  });

  test("isSealedKey", async () => {
    const { publicKey } = await generateKexKeyPair();
    const sealed = await sealRoomKey(generateRoomKey(), publicKey, { room_id: "r", epoch: 0, member: "m" });
    expect(isSealedKey(sealed)).toBe(true);
    for (const bad of ["", b64url.encode(new Uint8Array(91)), b64url.encode(new Uint8Array(93)), sealed + "==", sealed.replace(/^./, "*"), sealed.slice(1)]) {
      expect(isSealedKey(bad)).toBe(false);
    }
  });

  test("isCiphertext", async () => {
    expect(isCiphertext(await encryptBody(generateRoomKey(), "", { room_id: "r", epoch: 0 }))).toBe(true);
    expect(isCiphertext(b64url.encode(new Uint8Array(28)))).toBe(true);
    expect(isCiphertext(b64url.encode(new Uint8Array(5000)))).toBe(true);
    for (const bad of ["", b64url.encode(new Uint8Array(27)), "plain text message", b64url.encode(new Uint8Array(30)) + "=", "A".repeat(41)]) {
      expect(isCiphertext(bad)).toBe(false);
    }
  });
});
