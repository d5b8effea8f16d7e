import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { encryptBody, generateKexKeyPair, generateRoomKey, generateSigningKeyPair, sealRoomKey, signMessage } from "../../src/protocol/room-crypto.ts";
import { MAX_CIPHERTEXT_CHARS } from "../../src/protocol/rooms.ts";
import type { RoomContext } from "../../src/rooms/room.ts";
import { RoomError } from "../../src/rooms/service.ts";
import type { Queryable } from "../../src/store/store.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

/**
 * A post is checked against the room as its actor had it; a removal (and, in an encrypted room,
 * its new key epoch) can land between that check and the insert. The insert checks again, and
 * the removal is answered only after the posts in flight are committed or refused. The
 * interleavings are forced by holding the message log's insert at a seam, not by timing.
 */

/** Holds the message log's next insert before it is sent, or after it returned (committed, not yet answered). */
function insertSeam(app: TestApp) {
  const log = (app.server.rooms as unknown as { log: { db: Queryable & { transaction: (fn: (tx: Queryable) => Promise<unknown>) => Promise<unknown> } } }).log;
  const real = log.db;
  let armed: { phase: "before" | "after"; reached: () => void; released: Promise<void> } | null = null;
  const releases: Array<() => void> = [];
  const wrap = (q: Queryable): Queryable => ({
    ...q,
    query: (async (sql: string, params?: unknown[]) => {
      const gate = armed && sql.includes("insert into room_messages") ? armed : null;
      if (!gate) return q.query(sql, params as never);
      armed = null;
      if (gate.phase === "before") {
        gate.reached();
        await gate.released;
        return q.query(sql, params as never);
      }
      const rows = await q.query(sql, params as never);
      gate.reached();
      await gate.released;
      return rows;
    }) as Queryable["query"],
  });
  log.db = { ...wrap(real), transaction: (fn) => real.transaction((tx) => fn(wrap(tx))) };
  return {
    arm(phase: "before" | "after") {
      let reached!: () => void;
      let release!: () => void;
      const hit = new Promise<void>((r) => (reached = r));
      const released = new Promise<void>((r) => (release = r));
      armed = { phase, reached, released };
      releases.push(release);
      return { hit, release };
    },
    /** Puts the database back and lets anything still held go (a failed test must not hang the rest). */
    restore() {
      log.db = real;
      for (const release of releases) release();
    },
  };
}

for (const flavor of FLAVORS) {
  describe(`rooms: posts racing a removal (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    });
    afterAll(async () => app?.close());

    const post = (id: string, token: string, body: Record<string, unknown>) => app.call("POST", `/api/rooms/${id}/messages`, { token, body });
    const tenantOf = async (id: string) => (await app.server.store.query<{ tenant_id: string }>("select tenant_id from rooms where id = $1", [id]))[0]!.tenant_id;
    const stored = async (id: string, sender: string) =>
      (await app.server.store.query<{ n: number }>("select count(*)::int as n from room_messages where room_id = $1 and sender = $2", [id, sender]))[0]!.n;
    const isMemberRow = async (id: string, member: string) =>
      (await app.server.store.query("select 1 from room_members where room_id = $1 and member = $2", [id, member])).length > 0;
    async function until(what: string, cond: () => Promise<boolean>) {
      for (let i = 0; i < 500; i++) {
        if (await cond()) return;
        await Bun.sleep(10);
      }
      throw new Error(`timed out waiting for ${what}`);
    }

    async function plainRoom() {
      const alice = await app.user("technician");
      const bob = await app.user("technician");
      const id = (await app.call("POST", "/api/rooms", { token: alice.token, body: { name: "plain" } })).body.id as string;
      expect((await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: bob.id } })).status).toBe(201);
      return { alice, bob, id };
    }

    /** An encrypted, signed room of alice (owner), bob and carol at epoch 1, keyed. */
    async function secureRoom() {
      const [alice, bob, carol] = [await app.user("technician"), await app.user("technician"), await app.user("technician")];
      const kex = { a: await generateKexKeyPair(), b: await generateKexKeyPair(), c: await generateKexKeyPair() };
      const sign = await generateSigningKeyPair();
      await app.call("PUT", "/api/me/keys", { token: alice.token, body: { x25519: kex.a.publicKey } });
      await app.call("PUT", "/api/me/keys", { token: bob.token, body: { x25519: kex.b.publicKey, ed25519: sign.publicKey } });
      await app.call("PUT", "/api/me/keys", { token: carol.token, body: { x25519: kex.c.publicKey } });
      const id = (await app.call("POST", "/api/rooms", { token: alice.token, body: { name: "secure", policy: { encrypt: true, sign: true } } })).body.id as string;
      const k1 = generateRoomKey();
      const seal = (pub: string, member: string) => sealRoomKey(k1, pub, { room_id: id, epoch: 1, member });
      expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: alice.token, body: { epoch: 1, sealed: { [alice.id]: await seal(kex.a.publicKey, alice.id) } } })).status).toBe(200);
      for (const [u, k] of [[bob, kex.b], [carol, kex.c]] as const) {
        expect((await app.call("POST", `/api/rooms/${id}/members`, { token: alice.token, body: { user_id: u.id, sealed_key: await seal(k.publicKey, u.id) } })).status).toBe(201);
      }
      const signed = async (client_id: string) => {
        const body = await encryptBody(k1, "still here?", { room_id: id, epoch: 1 });
        const ts = Date.now();
        return { body, epoch: 1, client_id, ts, signature: await signMessage(sign.privateKey, { room_id: id, client_id, sender: bob.id, body, ts }) };
      };
      return { alice, bob, carol, id, signed };
    }

    test("a post checked before the removal is refused at its insert (403 NOT_A_MEMBER), nothing stored", async () => {
      const { alice, bob, id } = await plainRoom();
      const checked = (await app.server.rooms.forMember(await tenantOf(id), id, bob.id)) as RoomContext;
      expect((await app.call("DELETE", `/api/rooms/${id}/members/${bob.id}`, { token: alice.token })).status).toBe(204);
      const err = await app.server.rooms.post(checked, { member: bob.id, name: bob.username }, { body: "after my removal" }).catch((e) => e);
      expect(err).toBeInstanceOf(RoomError);
      expect([err.status, err.code]).toEqual([403, "NOT_A_MEMBER"]);
      expect(await stored(id, bob.id)).toBe(0);
      // The rest of the room goes on.
      expect((await post(id, alice.token, { body: "hello" })).status).toBe(201);
    });

    test("encrypted room: a post under the old epoch is refused once the room moved on (409 WRONG_EPOCH); other rows of the batch commit", async () => {
      const { alice, bob, carol, id, signed } = await secureRoom();
      const checked = (await app.server.rooms.forMember(await tenantOf(id), id, bob.id)) as RoomContext;
      expect(checked.epoch).toBe(1);
      // Carol leaves: epoch 2. Bob is still a member, but his post was checked at epoch 1.
      expect((await app.call("DELETE", `/api/rooms/${id}/members/${carol.id}`, { token: carol.token })).status).toBe(204);
      const plain = await plainRoom();
      // Hold a first write so that bob's post and another room's post queue up for the same batch.
      const seam = insertSeam(app);
      const log = (app.server.rooms as unknown as { log: { pending: number; stats: { batches: number } } }).log;
      let late: PromiseSettledResult<unknown>, other: PromiseSettledResult<{ status: number }>, first: { status: number };
      try {
        const held = seam.arm("before");
        const firstPost = post(plain.id, plain.alice.token, { body: "first" });
        await held.hit;
        const settling = Promise.allSettled([
          app.server.rooms.post(checked, { member: bob.id, name: bob.username }, await signed("late-1")),
          post(plain.id, plain.alice.token, { body: "same batch, another room" }),
        ]);
        await until("both posts queued", async () => log.pending === 3);
        const batches = log.stats.batches;
        held.release();
        [late, other] = await settling;
        first = await firstPost;
        expect(log.stats.batches).toBe(batches + 2); // the held one, then both in one
      } finally {
        seam.restore();
      }
      expect(first.status).toBe(201);
      expect(late.status).toBe("rejected");
      const err = (late as PromiseRejectedResult).reason;
      expect(err).toBeInstanceOf(RoomError);
      expect([err.status, err.code]).toEqual([409, "WRONG_EPOCH"]);
      expect(other.status === "fulfilled" && other.value.status).toBe(201);
      expect(await stored(id, bob.id)).toBe(0);
      expect(alice.id).toBeTruthy();
    });

    test("HTTP: a post held before its insert while the poster is removed gets 403, and nothing is stored", async () => {
      const { alice, bob, id, signed } = await secureRoom();
      const seam = insertSeam(app);
      try {
        const held = seam.arm("before");
        const posting = post(id, bob.token, await signed("held-1"));
        await held.hit; // bob's post passed every check and waits at its insert
        let removed = false;
        const removing = app.call("DELETE", `/api/rooms/${id}/members/${bob.id}`, { token: alice.token }).then((r) => ((removed = true), r));
        await until("the removal's projection", async () => !(await isMemberRow(id, bob.id)));
        held.release();
        const r = await posting;
        expect([r.status, r.body.error_code]).toEqual([403, "NOT_A_MEMBER"]);
        expect((await removing).status).toBe(204);
        expect(removed).toBe(true);
        expect(await stored(id, bob.id)).toBe(0);
      } finally {
        seam.restore();
      }
    });

    test("HTTP: a removal is not answered while a post that passed the check is still being committed", async () => {
      const { alice, bob, id } = await plainRoom();
      const seam = insertSeam(app);
      const order: string[] = [];
      try {
        const held = seam.arm("after");
        const posting = post(id, bob.token, { body: "in flight" }).then((r) => (order.push("post"), r));
        await held.hit; // inserted (before the removal), not yet answered nor published
        const removing = app.call("DELETE", `/api/rooms/${id}/members/${bob.id}`, { token: alice.token }).then((r) => (order.push("delete"), r));
        await until("the removal's projection", async () => !(await isMemberRow(id, bob.id)));
        await Bun.sleep(150);
        expect(order).toEqual([]); // the removal waits for the post in flight
        held.release();
        expect((await posting).status).toBe(201);
        expect((await removing).status).toBe(204);
        expect(order).toEqual(["post", "delete"]);
        // After the removal was answered, bob's posts are refused.
        expect((await post(id, bob.token, { body: "after" })).status).toBe(403);
        expect(await stored(id, bob.id)).toBe(1);
      } finally {
        seam.restore();
      }
    });

    test("an over-long body is 413 BODY_TOO_LARGE, and a large request is refused before it is read whole", async () => {
      const { alice, id } = await plainRoom();
      const long = await post(id, alice.token, { body: "x".repeat(MAX_CIPHERTEXT_CHARS + 1) });
      expect([long.status, long.body.error_code]).toEqual([413, "BODY_TOO_LARGE"]);
      const huge = await post(id, alice.token, { body: "x".repeat(5 * 1024 * 1024) });
      expect([huge.status, huge.body.error_code]).toEqual([413, "BODY_TOO_LARGE"]);
      // Without a content-length (chunked), the cap holds while it streams in.
      const chunk = new TextEncoder().encode("x".repeat(64 * 1024));
      let sent = 0;
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(new TextEncoder().encode('{"body":"'));
        },
        pull(c) {
          if (sent++ < 80) c.enqueue(chunk);
          else {
            c.enqueue(new TextEncoder().encode('"}'));
            c.close();
          }
        },
      });
      const res = await fetch(`${app.url}/api/rooms/${id}/messages`, {
        method: "POST", body: stream, headers: { authorization: `Bearer ${alice.token}`, "content-type": "application/json" },
        duplex: "half",
      } as RequestInit);
      expect([res.status, (await res.json()).error_code]).toEqual([413, "BODY_TOO_LARGE"]);
      expect(sent).toBeLessThan(80);
      expect(await stored(id, alice.id)).toBe(0);
      // Still parsed and validated as before below the cap.
      expect((await post(id, alice.token, { body: "ok" })).status).toBe(201);
      expect((await app.call("POST", `/api/rooms/${id}/messages`, { token: alice.token, body: { body: "" } })).status).toBe(400);
    });
  });
}
