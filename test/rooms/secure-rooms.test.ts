import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  decryptBody, encryptBody, generateKexKeyPair, generateRoomKey, generateSigningKeyPair, openRoomKey, sealRoomKey, signMessage, verifyMessage,
} from "../../src/protocol/room-crypto.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

/** Signed rooms (R3) and end-to-end rooms (R4), driven the way a client would with room-crypto.ts. */
for (const flavor of FLAVORS) {
  describe(`signed and end-to-end rooms (${flavor})`, () => {
    let app: TestApp;
    type U = Awaited<ReturnType<TestApp["user"]>>;
    let alice: U, bob: U, carol: U;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      [alice, bob, carol] = [await app.user("technician"), await app.user("technician"), await app.user("technician")];
    });
    afterAll(async () => app?.close());

    const post = (id: string, token: string, body: Record<string, unknown>) => app.call("POST", `/api/rooms/${id}/messages`, { token, body });
    const messages = async (id: string, token = alice.token) => (await app.call("GET", `/api/rooms/${id}/messages`, { token })).body.messages as any[];

    test("signed room: a good signature is stored with the key that verifies it; bad, missing, stale or unregistered ones are refused and nothing is stored", async () => {
      const id = (await app.call("POST", "/api/rooms", { token: alice.token, body: { name: "signed", policy: { sign: true } } })).body.id;
      const keys = await generateSigningKeyPair();
      const fields = { room_id: id, client_id: "c1", sender: alice.id, body: "signed hello", ts: Date.now() };
      // No registered key yet.
      expect((await post(id, alice.token, { ...fields, signature: await signMessage(keys.privateKey, fields) })).body.error_code).toBe("NO_SIGNING_KEY");
      expect((await app.call("PUT", "/api/me/keys", { token: alice.token, body: { ed25519: "too-short" } })).status).toBe(400);
      const reg = await app.call("PUT", "/api/me/keys", { token: alice.token, body: { ed25519: keys.publicKey } });
      expect(reg.body).toEqual({ user_id: alice.id, ed25519: keys.publicKey, x25519: null });

      const good = await post(id, alice.token, { ...fields, signature: await signMessage(keys.privateKey, fields) });
      expect(good.status).toBe(201);
      expect(good.body).toMatchObject({ sender: alice.id, client_id: "c1", ts: fields.ts, sign_key: keys.publicKey });
      // Any client can verify what it got, with what it got.
      const m = good.body;
      expect(await verifyMessage(m.sign_key, { room_id: m.room_id, client_id: m.client_id, sender: m.sender, body: m.body, ts: m.ts }, m.signature)).toBe(true);

      const other = await generateSigningKeyPair();
      const f2 = { ...fields, client_id: "c2", body: "second" };
      expect((await post(id, alice.token, { ...f2, signature: await signMessage(other.privateKey, f2) })).body.error_code).toBe("BAD_SIGNATURE");
      expect((await post(id, alice.token, { ...f2, body: "tampered", signature: await signMessage(keys.privateKey, f2) })).body.error_code).toBe("BAD_SIGNATURE");
      expect((await post(id, alice.token, { ...f2, signature: "not!base64" })).status).toBe(400);
      expect((await post(id, alice.token, { ...f2, signature: "AAAA" })).body.error_code).toBe("BAD_SIGNATURE");
      expect((await post(id, alice.token, { body: "unsigned" })).body.error_code).toBe("SIGNATURE_REQUIRED");
      const old = { ...f2, ts: Date.now() - 10 * 60_000 };
      expect((await post(id, alice.token, { ...old, signature: await signMessage(keys.privateKey, old) })).body.error_code).toBe("STALE_TIMESTAMP");
      // The signature names the sender: Bob cannot post Alice's signed message as his own.
      await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: bob.id } });
      expect((await post(id, bob.token, { ...fields, client_id: "c3", signature: await signMessage(keys.privateKey, { ...fields, client_id: "c3" }) })).status).toBeGreaterThanOrEqual(400);

      expect((await messages(id)).map((x) => x.body)).toEqual(["signed hello"]);
      const audit = (await app.call("GET", `/api/audit?type=room.message_refused&limit=50`, { token: app.adminToken })).body;
      expect(JSON.stringify(audit)).toContain("bad_signature");
    });

    test("end-to-end room: the server stores only ciphertext; sealed keys per member; adding shares the key; removing rotates it so the removed member cannot read on", async () => {
      const kex = { alice: await generateKexKeyPair(), bob: await generateKexKeyPair(), carol: await generateKexKeyPair() };
      for (const [u, k] of [[alice, kex.alice], [bob, kex.bob], [carol, kex.carol]] as const) {
        expect((await app.call("PUT", "/api/me/keys", { token: u.token, body: { x25519: k.publicKey } })).status).toBe(200);
      }
      const created = await app.call("POST", "/api/rooms", { token: alice.token, body: { name: "secret", policy: { encrypt: true } } });
      const id = created.body.id as string;
      expect(created.body).toMatchObject({ epoch: 1, keyed_epoch: 0 });
      // Nothing can be posted before the key is shared.
      expect((await post(id, alice.token, { body: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", epoch: 1 })).body.error_code).toBe("ROOM_KEY_PENDING");

      // Alice generates the room key and seals it to herself (the only member).
      const k1 = generateRoomKey();
      const sealFor = async (key: Uint8Array, epoch: number, who: U) => {
        const pub = (await app.call("GET", `/api/users/${who.id}/keys`, { token: alice.token })).body.x25519;
        return sealRoomKey(key, pub, { room_id: id, epoch, member: who.id });
      };
      expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: alice.token, body: { epoch: 1, sealed: { [alice.id]: "short" } } })).body.error_code).toBe("MALFORMED_SEALED_KEY");
      expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: alice.token, body: { epoch: 2, sealed: { [alice.id]: await sealFor(k1, 2, alice) } } })).body.error_code).toBe("WRONG_EPOCH");
      const keyed = await app.call("PUT", `/api/rooms/${id}/keys`, { token: alice.token, body: { epoch: 1, sealed: { [alice.id]: await sealFor(k1, 1, alice) } } });
      expect(keyed.body).toMatchObject({ epoch: 1, keyed_epoch: 1 });

      // Adding Bob needs his sealed copy.
      expect((await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: bob.id } })).body.error_code).toBe("SEALED_KEY_REQUIRED");
      expect((await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: bob.id, sealed_key: await sealFor(k1, 1, bob) } })).status).toBe(201);
      expect((await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: carol.id, sealed_key: await sealFor(k1, 1, carol) } })).status).toBe(201);

      // Bob opens his copy and posts ciphertext; the server keeps it as it came.
      const bobKeys = (await app.call("GET", `/api/rooms/${id}/keys`, { token: bob.token })).body.keys;
      expect(bobKeys.map((k: any) => k.epoch)).toEqual([1]);
      const bobK1 = await openRoomKey(bobKeys[0].sealed, kex.bob.privateKey, { room_id: id, epoch: 1, member: bob.id });
      const c1 = await encryptBody(bobK1, "the password is in the vault", { room_id: id, epoch: 1 });
      expect((await post(id, bob.token, { body: c1, epoch: 1 })).status).toBe(201);
      expect((await post(id, bob.token, { body: "plain text here", epoch: 1 })).body.error_code).toBe("MALFORMED_CIPHERTEXT");
      expect((await post(id, bob.token, { body: c1 })).body.error_code).toBe("EPOCH_REQUIRED");
      const [stored] = await messages(id);
      expect(stored.body).toBe(c1);
      expect(stored.epoch).toBe(1);
      const rows = await app.server.store.query<{ body: string }>("select body from room_messages where room_id = $1", [id]);
      expect(rows.map((r) => r.body).join()).not.toContain("vault");
      expect(await decryptBody(k1, stored.body, { room_id: id, epoch: 1 })).toBe("the password is in the vault");

      // Carol is removed: the room moves to epoch 2 and waits for a key sealed to the rest.
      expect((await app.call("DELETE", `/api/rooms/${id}/members/${carol.id}`, { token: alice.token })).status).toBe(204);
      const after = await app.call("GET", `/api/rooms/${id}`, { token: alice.token });
      expect(after.body).toMatchObject({ epoch: 2, keyed_epoch: 1 });
      expect((await post(id, bob.token, { body: c1, epoch: 1 })).body.error_code).toBe("WRONG_EPOCH");
      expect((await post(id, bob.token, { body: c1, epoch: 2 })).body.error_code).toBe("ROOM_KEY_PENDING");
      const k2 = generateRoomKey();
      // Keys must cover exactly the current members: Carol's copy is refused.
      expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: alice.token, body: { epoch: 2, sealed: { [alice.id]: await sealFor(k2, 2, alice), [bob.id]: await sealFor(k2, 2, bob), [carol.id]: await sealFor(k2, 2, carol) } } })).body.error_code).toBe("KEYS_MUST_COVER_MEMBERS");
      expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: alice.token, body: { epoch: 2, sealed: { [alice.id]: await sealFor(k2, 2, alice), [bob.id]: await sealFor(k2, 2, bob) } } })).status).toBe(200);
      const c2 = await encryptBody(k2, "new secret after carol left", { room_id: id, epoch: 2 });
      expect((await post(id, alice.token, { body: c2, epoch: 2 })).status).toBe(201);

      // Carol can no longer read through the API, and the epoch-1 key she kept does not open epoch 2.
      expect((await app.call("GET", `/api/rooms/${id}/messages`, { token: carol.token })).status).toBe(403);
      const carolK1 = await openRoomKey((await app.server.store.query<{ sealed: string }>("select sealed from room_keys where room_id = $1 and member = $2 and epoch = 1", [id, carol.id]))[0]!.sealed, kex.carol.privateKey, { room_id: id, epoch: 1, member: carol.id });
      const leaked = (await app.server.store.query<{ body: string }>("select body from room_messages where room_id = $1 and epoch = 2", [id]))[0]!.body;
      await expect(decryptBody(carolK1, leaked, { room_id: id, epoch: 2 })).rejects.toThrow();
      expect((await app.server.store.query("select 1 from room_keys where room_id = $1 and member = $2 and epoch = 2", [id, carol.id])).length).toBe(0);
      // Bob reads both epochs with his two keys.
      const bobK2 = await openRoomKey((await app.call("GET", `/api/rooms/${id}/keys`, { token: bob.token })).body.keys.find((k: any) => k.epoch === 2).sealed, kex.bob.privateKey, { room_id: id, epoch: 2, member: bob.id });
      const plain = await Promise.all((await messages(id, bob.token)).map((m) => decryptBody(m.epoch === 1 ? bobK1 : bobK2, m.body, { room_id: id, epoch: m.epoch })));
      expect(plain).toEqual(["the password is in the vault", "new secret after carol left"]);
    });
  });
}
