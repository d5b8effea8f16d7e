import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { silentLogger } from "../../src/log.ts";
import { RoomHub, type Subscriber } from "../../src/rooms/hub.ts";
import type { RoomContext } from "../../src/rooms/room.ts";
import { generateKexKeyPair, generateRoomKey, sealRoomKey } from "../../src/protocol/room-crypto.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";

/**
 * Edges a review found: a subscriber admitted on a membership check that a removal overtook,
 * sealed keys lost between the actor accepting an epoch and the keys being stored, and the
 * memory of rooms without history.
 */
describe("rooms: edges", () => {
  let app: TestApp;
  beforeAll(async () => {
    app = await startTestApp("pglite");
  });
  afterAll(async () => app?.close());

  test("a subscriber registered after its removal overtook the check is closed with not_a_member", async () => {
    const bob = await app.user("technician");
    const id = (await app.call("POST", "/api/rooms", { token: app.adminToken, body: { name: "race" } })).body.id;
    await app.call("POST", `/api/rooms/${id}/members`, { token: app.adminToken, body: { user_id: bob.id } });
    const checked = (await app.server.rooms.context((await app.call("GET", "/api/me", { token: app.adminToken })).body.tenant_id ?? "00000000-0000-0000-0000-000000000001", id)) as RoomContext;
    expect(checked.members[bob.id]).toBeDefined(); // the route's check passed here…
    expect((await app.call("DELETE", `/api/rooms/${id}/members/${bob.id}`, { token: app.adminToken })).status).toBe(204); // …then the removal
    const closed: Array<[number, string]> = [];
    const sub: Subscriber = { member: bob.id, send: () => {}, backlog: () => 0, close: (code, reason) => void closed.push([code, reason]) };
    await app.server.rooms.subscribe(checked, sub, null);
    expect(closed).toEqual([[4301, "not_a_member"]]);
    expect(app.server.rooms.hub.subscribers(id)).toBe(0);
  });

  test("sealed keys the actor accepted but the database lost can be stored again by the same upload", async () => {
    const kex = await generateKexKeyPair();
    const me = (await app.call("GET", "/api/me", { token: app.adminToken })).body;
    await app.call("PUT", "/api/me/keys", { token: app.adminToken, body: { x25519: kex.publicKey } });
    const id = (await app.call("POST", "/api/rooms", { token: app.adminToken, body: { name: "keys", policy: { encrypt: true } } })).body.id;
    const sealed = { [me.id]: await sealRoomKey(generateRoomKey(), kex.publicKey, { room_id: id, epoch: 1, member: me.id }) };
    expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: app.adminToken, body: { epoch: 1, sealed } })).status).toBe(200);
    await app.server.store.query("delete from room_keys where room_id = $1", [id]); // the effect's write, lost
    expect((await app.call("GET", `/api/rooms/${id}/keys`, { token: app.adminToken })).body.keys).toEqual([]);
    expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: app.adminToken, body: { epoch: 1, sealed } })).status).toBe(200);
    expect((await app.call("GET", `/api/rooms/${id}/keys`, { token: app.adminToken })).body.keys).toEqual([{ epoch: 1, sealed: sealed[me.id] }]);
    // With the keys in place, a second upload is refused as before.
    expect((await app.call("PUT", `/api/rooms/${id}/keys`, { token: app.adminToken, body: { epoch: 1, sealed } })).body.error_code).toBe("EPOCH_ALREADY_KEYED");
  });

  test("rooms without history keep their recent messages only for the most recently used idle rooms", () => {
    const hub = new RoomHub(app.server.store, silentLogger, { maxIdleRecentRooms: 3 });
    const msg = (room: string, n: number) => ({ id: `01J0000000000000000000000${n}`, room_id: room, sender: "s", sender_name: "s", client_id: null, body: "b", epoch: null, ts: n, signature: null, sign_key: null });
    for (let i = 0; i < 6; i++) hub.publish(`room-${i}`, msg(`room-${i}`, i), false);
    const kept = [0, 1, 2, 3, 4, 5].filter((i) => hub.hasRecent(`room-${i}`, msg(`room-${i}`, i).id));
    expect(kept.length).toBeLessThanOrEqual(4);
    expect(kept).toContain(5); // the newest stays
    expect(kept).not.toContain(0); // the oldest went
  });
});
