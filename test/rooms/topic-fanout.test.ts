import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import net from "node:net";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { wsReader } from "../helpers/room-client.ts";
import { FLAVORS } from "../helpers/stores.ts";

/**
 * WebSocket subscribers that are live take a room's frames from a Bun (uWS) topic: one
 * server.publish per frame instead of a send per socket (src/rooms/hub.ts, toTopic). uWS skips a
 * socket silently once it is over Bun's backpressure limit, so these tests hold the hub to its
 * promises on that path: exactly once and in order across the switch from history to the topic,
 * and a slow subscriber cut off with 4300 and no gap before the cut.
 */

/** Server → client WebSocket frames (unmasked) out of a byte stream. */
function frames(bytes: Buffer): Array<{ op: number; payload: Buffer }> {
  const out: Array<{ op: number; payload: Buffer }> = [];
  let o = bytes.indexOf("\r\n\r\n") + 4; // after the 101 response
  while (bytes.length - o >= 2) {
    let len = bytes[o + 1]! & 0x7f;
    let h = 2;
    if (len === 126) (len = bytes.readUInt16BE(o + 2)), (h = 4);
    else if (len === 127) (len = Number(bytes.readBigUInt64BE(o + 2))), (h = 10);
    if (bytes.length - o < h + len) break;
    out.push({ op: bytes[o]! & 0x0f, payload: bytes.subarray(o + h, o + h + len) });
    o += h + len;
  }
  return out;
}

for (const flavor of FLAVORS) {
  describe(`room fan-out over topics (${flavor})`, () => {
    let app: TestApp;
    let alice: Awaited<ReturnType<TestApp["user"]>>;
    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_ROOM_SUBSCRIBER_BUFFER_BYTES: String(256 * 1024) } });
      alice = await app.user("technician");
    });
    afterAll(async () => app?.close());

    const room = async () => (await app.call("POST", "/api/rooms", { token: alice.token, body: { name: "topic" } })).body.id as string;
    const post = (id: string, body: string) => app.call("POST", `/api/rooms/${id}/messages`, { token: alice.token, body: { body } });
    const wsUrl = (id: string) => `${app.url.replace(/^http/, "ws")}/ws/rooms/${id}`;

    test("many WebSocket subscribers joining while messages are posted each get every message once, in order", async () => {
      const id = await room();
      const published = app.server.rooms.hub.stats.published;
      let posting = true;
      const writers = [0, 1, 2].map(async (w) => {
        for (let i = 0; posting && i < 300; i++) expect((await post(id, `w${w}-${i}`)).status).toBe(201);
      });
      const readers: Awaited<ReturnType<typeof wsReader>>[] = [];
      for (let i = 0; i < 12; i++) {
        await Bun.sleep(15);
        // Half resume after a message they already have (history, then the topic).
        const have = i % 2 === 1 && readers[0]?.ids.length ? readers[0].ids[Math.floor(readers[0].ids.length / 2)] : undefined;
        const r = await wsReader(wsUrl(id), alice.token, have);
        (r as { from?: string }).from = have;
        readers.push(r);
      }
      posting = false;
      await Promise.all(writers);
      const all = (await app.call("GET", `/api/rooms/${id}/messages?limit=1000`, { token: alice.token })).body.messages.map((m: any) => m.id);
      for (const r of readers) {
        const from = (r as { from?: string }).from;
        const want = from ? all.slice(all.indexOf(from) + 1) : all;
        await r.waitFor(() => r.ids.length >= want.length, 10_000, "every message");
        expect(r.ids).toEqual(want);
        r.stop();
      }
      expect(app.server.rooms.hub.stats.published).toBeGreaterThan(published); // the topic path was taken
    });

    test("a WebSocket subscriber that stops reading is cut off with 4300, with no gap before the cut; the others get everything", async () => {
      const id = await room();
      const fast = await wsReader(wsUrl(id), alice.token);
      await fast.waitFor(() => fast.live, 5_000, "live");
      // A subscriber that sends the upgrade and then reads nothing (the kernel's buffers fill first).
      const chunks: Buffer[] = [];
      const stalled = net.connect(Number(new URL(app.url).port), "127.0.0.1");
      stalled.on("data", (c: Buffer) => chunks.push(c));
      await new Promise<void>((resolve) => stalled.once("connect", () => resolve()));
      stalled.write(`GET /ws/rooms/${id} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer ${alice.token}\r\n\r\n`);
      const until = Date.now() + 5_000;
      while (app.server.rooms.hub.subscribers(id) < 2 && Date.now() < until) await Bun.sleep(10);
      await Bun.sleep(100); // its `live` frame is out: it is on the topic now
      stalled.pause();

      const dropped = app.server.rooms.hub.stats.dropped;
      const body = "z".repeat(12 * 1024);
      const ids: string[] = [];
      for (let i = 0; i < 800 && app.server.rooms.hub.stats.dropped === dropped; i++) ids.push((await post(id, body)).body.id);
      for (let i = 0; i < 20; i++) ids.push((await post(id, body)).body.id);
      expect(app.server.rooms.hub.stats.dropped).toBe(dropped + 1);
      expect(app.server.rooms.hub.subscribers(id)).toBe(1);
      await fast.waitFor(() => fast.ids.length === ids.length, 10_000, "the fast subscriber's messages");
      expect(fast.ids).toEqual(ids);

      // Now read what the stalled one was sent: a prefix of the messages, then the close.
      const ended = new Promise<void>((resolve) => stalled.once("close", () => resolve()));
      stalled.resume();
      await Promise.race([ended, Bun.sleep(10_000)]);
      const got = frames(Buffer.concat(chunks));
      const messages = got.filter((f) => f.op === 1).map((f) => JSON.parse(f.payload.toString())).filter((f) => f.t === "message").map((f) => f.message.id);
      expect(messages.length).toBeGreaterThan(0);
      expect(messages.length).toBeLessThan(ids.length);
      expect(messages).toEqual(ids.slice(0, messages.length)); // no gap, no duplicate
      const close = got.find((f) => f.op === 8);
      expect(close?.payload.readUInt16BE(0)).toBe(4300);
      stalled.destroy();
      fast.stop();
    }, 60_000);
  });
}
