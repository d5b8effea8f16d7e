import { afterAll, afterEach, beforeAll, describe, expect, test } from "bun:test";
import { unpack } from "msgpackr";
import postgres from "postgres";
import { BunWebSocket } from "../../src/agent/bun-websocket.ts";
import { AGENT_SOCKET_LIMITS } from "../../src/http/ws/agent.ts";
import { Challenge, CLOSE, decode, encode, PROTOCOL_VERSION, Welcome, type AgentMessage } from "../../src/protocol/agent.ts";
import { dataFrame } from "../../src/protocol/frames.ts";
import { agentIdentity, presenting, TestAgentSocket } from "../helpers/agent-client.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import { enrolledAgent, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";

/** The socket's clocks and caps as shipped; a test that shortens them puts them back. */
const LIMITS = { ...AGENT_SOCKET_LIMITS };
afterEach(() => void Object.assign(AGENT_SOCKET_LIMITS, LIMITS));

/**
 * A bare client that sends whatever it is told, from any address: `from` goes in
 * X-Forwarded-For, believed because the test apps trust 127.0.0.1 as a proxy.
 */
class RawClient {
  readonly closed: Promise<{ code: number; reason: string }>;
  readonly opened: Promise<void>;
  private readonly ws: WebSocket;
  private readonly inbox: Uint8Array[] = [];

  /** `headers`: more for the upgrade request (a presented hello, see `presenting`). */
  constructor(url: string, from?: string, headers: Record<string, string> = {}) {
    this.ws = new BunWebSocket(url.replace(/^http/, "ws") + "/ws/agent", { headers: { ...(from ? { "x-forwarded-for": from } : {}), ...headers } });
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e) => void this.inbox.push(new Uint8Array(e.data as ArrayBuffer));
    this.opened = new Promise((resolve, reject) => ((this.ws.onopen = () => resolve()), (this.ws.onerror = () => reject(new Error("websocket error")))));
    this.closed = new Promise((resolve) => (this.ws.onclose = (e) => resolve({ code: e.code, reason: e.reason })));
  }

  send(message: unknown): void {
    this.ws.send(new Uint8Array(encode(message as AgentMessage)));
  }

  sendRaw(bytes: Uint8Array | string): void {
    this.ws.send(typeof bytes === "string" ? bytes : new Uint8Array(bytes));
  }

  /** The next frame, or null if none comes within `ms` (or the socket closed). */
  async next(ms = 5_000): Promise<Uint8Array | null> {
    const deadline = Date.now() + ms;
    while (this.inbox.length === 0 && this.ws.readyState !== WebSocket.CLOSED && Date.now() < deadline) await Bun.sleep(20);
    return this.inbox.shift() ?? null;
  }

  /** The close code, or null if it is still open after `ms`. */
  async closedWithin(ms: number): Promise<number | null> {
    return Promise.race([this.closed.then((c) => c.code), Bun.sleep(ms).then(() => null)]);
  }

  close(): void {
    this.ws.close(1000, "bye");
  }
}

const hello = (machineId: string, key: string, over: Record<string, unknown> = {}) => ({ t: "hello", machine_id: machineId, key, agent_version: "test-1", protocol: PROTOCOL_VERSION, ...over });
/** A well-formed agent key that no machine has. */
const noSuchKey = () => `cak_${Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex")}`;

interface RefusalRow {
  tenant_id: string;
  actor_type: string;
  actor_id: string | null;
  target_id: string | null;
  ip: string | null;
  details: { close?: number; reason?: string; claimed_machine_id?: string; summary?: boolean; refusals?: number; reasons?: Record<string, number>; [k: string]: unknown };
}
const refusals = (app: TestApp, where: string, params: unknown[]) =>
  app.server.store.query<RefusalRow>(`select tenant_id, actor_type, actor_id, target_id, ip, details from audit_events where type = 'agent.refused' and ${where} order by id`, params);

/** M3/M4 on /ws/agent: proof of possession, every refusal's close code, presence, revocation. */
for (const flavor of FLAVORS) {
  describe(`agent socket (${flavor})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    const sockets: TestAgentSocket[] = [];
    const socket = () => {
      const s = new TestAgentSocket(app.url);
      sockets.push(s);
      return s;
    };

    const machine = (over: Record<string, unknown> = {}) => enrolledAgent(app, site, over);
    const get = async (id: string) => (await app.call("GET", `/api/machines/${id}`, { token: app.adminToken })).body;

    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_HEARTBEAT_MS: "200", TETHER_OFFLINE_AFTER_MS: "800", TETHER_TRUSTED_PROXIES: "127.0.0.1" } });
      site = await siteWithKey(app);
    }, 60_000);
    afterAll(async () => {
      for (const s of sockets) s.close();
      await app?.close();
    });

    test("a proved agent is bound to its machine: online, inventory, offline when it leaves", async () => {
      const m = await machine();
      const agent = socket();
      expect(await agent.handshake(m.id, m.key, m.privateKey)).toBe(true);
      expect(agent.welcome).toMatchObject({ machine_id: m.id, heartbeat_ms: 200, offline_after_ms: 800, external_ip: "127.0.0.1" });
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online");
      agent.status({ os: { name: "Debian", version: "12" }, hostname: "box-1", users: ["alice"], private_ips: ["10.0.0.5"], elevated: false });
      await eventually(async () => (await get(m.id)).inventory?.os?.name === "Debian", 3_000, "inventory");
      expect(await get(m.id)).toMatchObject({ external_ip: "127.0.0.1", agent_version: "test-1", inventory: { hostname: "box-1", users: ["alice"], private_ips: ["10.0.0.5"], elevated: false } });
      const listed = (await app.call("GET", `/api/machines?q=${encodeURIComponent("user:alice")}`, { token: app.adminToken })).body.machines;
      expect(listed.find((x: any) => x.id === m.id)?.inventory).toMatchObject({ os: { name: "Debian", version: "12" } });
      agent.close();
      await eventually(async () => (await get(m.id)).status === "offline", 3_000, "offline");
    });

    test("an inventory sent with the proof: online with it at once; with a bad signature it changes nothing", async () => {
      const m = await machine();
      const other = (await crypto.subtle.generateKey("Ed25519", true, ["sign", "verify"])) as CryptoKeyPair;
      const forged = socket();
      expect(await forged.handshake(m.id, m.key, m.privateKey, { signWith: other.privateKey, inventory: { hostname: "forged" } })).toBe(false);
      expect((await forged.closed).code).toBe(CLOSE.BAD_SIGNATURE);
      expect(await get(m.id)).toMatchObject({ status: "offline", inventory: {} });

      const agent = socket();
      expect(await agent.handshake(m.id, m.key, m.privateKey, { inventory: { hostname: "box-2", users: ["erin"], os: { name: "Debian", version: "12" } } })).toBe(true);
      // No status message: the online projection already has the inventory.
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online");
      expect(await get(m.id)).toMatchObject({ status: "online", agent_version: "test-1", inventory: { hostname: "box-2", users: ["erin"], os: { name: "Debian", version: "12" } } });
      const listed = (await app.call("GET", `/api/machines?q=${encodeURIComponent("user:erin")}`, { token: app.adminToken })).body.machines;
      expect(listed.map((x: any) => x.id)).toEqual([m.id]);
      agent.close();
      await eventually(async () => (await get(m.id)).status === "offline", 3_000, "offline");
      // Offline keeps the last inventory reported.
      expect((await get(m.id)).inventory).toMatchObject({ hostname: "box-2" });
    });

    test("a silent agent is dropped and goes offline after the configured time", async () => {
      const m = await machine();
      const agent = socket();
      expect(await agent.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online");
      const started = Date.now();
      expect((await agent.closed).code).toBe(CLOSE.SILENT);
      expect(Date.now() - started).toBeLessThan(3_000);
      await eventually(async () => (await get(m.id)).status === "offline", 3_000, "offline");
    });

    test("data frames are signs of life too: an agent streaming output without heartbeats stays connected", async () => {
      const m = await machine();
      const agent = socket();
      expect(await agent.handshake(m.id, m.key, m.privateKey)).toBe(true);
      let closed = false;
      void agent.closed.then(() => (closed = true));
      // Twice the offline time, with output on a channel that is gone (the relay drops it).
      for (let i = 0; i < 8; i++) {
        agent.sendRaw(dataFrame(12_345, `late output ${i}\r\n`));
        await Bun.sleep(200);
      }
      expect(closed).toBe(false);
      expect((await get(m.id)).status).toBe("online");
      // Then silence: dropped as any silent agent.
      expect((await agent.closed).code).toBe(CLOSE.SILENT);
    });

    test("heartbeats keep it online; a second connection supersedes the first (no ghost)", async () => {
      const m = await machine();
      const first = socket();
      expect(await first.handshake(m.id, m.key, m.privateKey)).toBe(true);
      for (let i = 0; i < 6; i++) {
        first.heartbeat(i);
        await Bun.sleep(200);
      }
      expect((await get(m.id)).status).toBe("online");
      const second = socket();
      expect(await second.handshake(m.id, m.key, m.privateKey)).toBe(true);
      expect((await first.closed).code).toBe(CLOSE.SUPERSEDED);
      second.heartbeat(1);
      await Bun.sleep(100);
      expect((await get(m.id)).status).toBe("online");
      const list = await app.call("GET", "/api/machines?limit=500", { token: app.adminToken });
      expect(list.body.machines.filter((x: any) => x.id === m.id)).toHaveLength(1);
      second.close();
    });

    test("a key's use is recorded at connect, at most once a minute: a reconnect within the minute writes nothing", async () => {
      const m = await machine();
      const lastUsed = async () => (await app.server.store.query<{ ms: number | null }>(
        "select (extract(epoch from last_used_at) * 1000)::float8 as ms from agent_keys where machine_id = $1 and revoked_at is null", [m.id]))[0]!.ms;
      // Enrollment's key has not been used yet.
      await app.server.store.query("update agent_keys set last_used_at = null where machine_id = $1", [m.id]);
      const first = socket();
      expect(await first.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await app.server.connections.flush();
      const recorded = await lastUsed();
      expect(recorded).not.toBeNull();
      first.close();
      await first.closed;
      const again = socket();
      expect(await again.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await app.server.connections.flush();
      expect(await lastUsed()).toBe(recorded);
      again.close();
      await again.closed;
      // A use recorded over a minute ago is written again.
      await app.server.store.query("update agent_keys set last_used_at = now() - interval '61 seconds' where machine_id = $1", [m.id]);
      const stale = await lastUsed();
      const later = socket();
      expect(await later.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await app.server.connections.flush();
      expect(await lastUsed()).toBeGreaterThan(stale! + 60_000);
      later.close();
    });

    test("nothing of a session reaches an agent before its welcome, even from a session opened while its handshake finishes", async () => {
      const m = await machine();
      // The welcome waits for the machine actor's commit: held back here while a session is opened.
      const system = app.server.system as any;
      const ask = system.ask;
      let release = () => {};
      const held = new Promise<void>((r) => (release = r));
      let reached = () => {};
      const connecting = new Promise<void>((r) => (reached = r));
      system.ask = async (address: string, event: any, ...rest: unknown[]) => {
        if (event?.type === "agent.connected" && address === `machine/${m.id}`) {
          reached();
          await held;
        }
        return ask.call(system, address, event, ...rest);
      };
      try {
        const agent = socket();
        await agent.open();
        agent.send({ t: "hello", machine_id: m.id, key: m.key, agent_version: "test-1", protocol: PROTOCOL_VERSION });
        const challenge = decode(Challenge, (await agent.next())!)!;
        agent.send({ t: "proof", signature: new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, m.privateKey, new Uint8Array(challenge.nonce))) });
        await connecting;
        const created = await app.call("POST", "/api/sessions", { token: app.adminToken, body: { machine_id: m.id } });
        expect(created.status).toBe(201);
        release();
        expect(decode(Welcome, (await agent.next())!)).toMatchObject({ machine_id: m.id });
        // The session starts on it once it is welcomed.
        expect(unpack((await agent.next())!)).toMatchObject({ t: "session.start", session: created.body.id });
        await app.call("POST", `/api/sessions/${created.body.id}/end`, { token: app.adminToken });
      } finally {
        system.ask = ask;
        release();
      }
    });

    test("every refusal has its own close code", async () => {
      const m = await machine();
      const other = await agentIdentity();
      const cases: Array<[string, (s: TestAgentSocket) => Promise<unknown>, number]> = [
        ["no proof, only the key", (s) => s.handshake(m.id, m.key, m.privateKey, { skipProof: true }), CLOSE.BAD_SIGNATURE],
        ["a signature by another key", (s) => s.handshake(m.id, m.key, m.privateKey, { signWith: other.keys.privateKey }), CLOSE.BAD_SIGNATURE],
        ["a login session as the key", (s) => s.handshake(m.id, app.adminToken, m.privateKey), CLOSE.WRONG_PLANE],
        ["an enrollment key as the key", (s) => s.handshake(m.id, site.key, m.privateKey), CLOSE.WRONG_PLANE],
        ["a key of no machine", (s) => s.handshake(m.id, `cak_${"00".repeat(32)}`, m.privateKey), CLOSE.UNKNOWN_KEY],
        ["not a protocol frame", async (s) => (await s.open(), s.sendRaw(new Uint8Array([0xc1, 0x00]))), CLOSE.BAD_MESSAGE],
      ];
      for (const [what, run, code] of cases) {
        const s = socket();
        await run(s);
        expect({ what, code: (await s.closed).code }).toEqual({ what, code });
      }
      // An API token as the key.
      const pat = await app.call("POST", "/api/tokens", { token: app.adminToken, body: { name: "x", scopes: ["machines:read"], expires_at: new Date(Date.now() + 3_600_000).toISOString() } });
      const s = socket();
      await s.handshake(m.id, pat.body.token, m.privateKey);
      expect((await s.closed).code).toBe(CLOSE.WRONG_PLANE);
      // Each refusal is audited.
      const audited = await app.call("GET", "/api/audit?type=agent.refused&limit=50", { token: app.adminToken });
      expect(audited.body.events.length).toBeGreaterThanOrEqual(7);
    });

    test("a hello presented in the upgrade's headers: challenged as the socket opens, welcomed after its proof; every refusal keeps its close code, audited", async () => {
      const m = await machine();
      const agent = new TestAgentSocket(app.url, presenting(m.id, m.key));
      sockets.push(agent);
      expect(await agent.handshake(m.id, m.key, m.privateKey, { inventory: { hostname: "presented-1" } })).toBe(true);
      expect(agent.welcome).toMatchObject({ machine_id: m.id, external_ip: "127.0.0.1" });
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online");
      expect(await get(m.id)).toMatchObject({ agent_version: "test-1", inventory: { hostname: "presented-1" } });
      agent.close();
      await eventually(async () => (await get(m.id)).status === "offline", 3_000, "offline");

      const other = await agentIdentity();
      const sign = async (key: CryptoKey, frame: Uint8Array | null) => new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key, new Uint8Array(decode(Challenge, frame!)!.nonce)));
      const cases: Array<[string, Record<string, string>, ((c: RawClient) => Promise<void>) | null, number, string]> = [
        ["a signature by another key", presenting(m.id, m.key), async (c) => c.send({ t: "proof", signature: await sign(other.keys.privateKey, await c.next()) }), CLOSE.BAD_SIGNATURE, "bad_signature"],
        ["a hello frame in place of the proof", presenting(m.id, m.key), async (c) => (await c.next(), c.send(hello(m.id, m.key))), CLOSE.BAD_SIGNATURE, "not_a_proof"],
        ["a login session as the key", presenting(m.id, app.adminToken), null, CLOSE.WRONG_PLANE, "wrong_plane"],
        ["an enrollment key as the key", presenting(m.id, site.key), null, CLOSE.WRONG_PLANE, "wrong_plane"],
        ["a key of no machine", presenting(m.id, noSuchKey()), null, CLOSE.UNKNOWN_KEY, "unknown_key"],
        ["another protocol version", presenting(m.id, m.key, { "tether-protocol": "2" }), null, CLOSE.UNSUPPORTED_PROTOCOL, "unsupported_protocol"],
        ["a machine id that is not one", presenting("not-a-uuid", m.key), null, CLOSE.BAD_MESSAGE, "bad_message"],
        ["a hello without its key", { "tether-machine-id": m.id }, null, CLOSE.BAD_MESSAGE, "bad_message"],
      ];
      for (const [i, [what, headers, run, code, reason]] of cases.entries()) {
        const from = `198.51.100.${70 + i}`;
        const c = new RawClient(app.url, from, headers);
        await c.opened;
        await run?.(c);
        expect({ what, code: await c.closedWithin(3_000) }).toEqual({ what, code });
        await eventually(async () => (await refusals(app, "ip = $1", [from])).length === 1, 3_000, `${what}: audited`);
        expect({ what, reason: (await refusals(app, "ip = $1", [from]))[0]!.details.reason }).toEqual({ what, reason });
      }
      expect((await get(m.id)).status).toBe("offline");
    });

    test("a presented hello's proof may come before its key is found, and waits for it; a second frame meanwhile is out of order; one that leaves meanwhile is audited", async () => {
      const m = await machine();
      /** Holds a lock that keeps the key lookup waiting, until the returned function is called. */
      const holdKeys = async () => {
        let release!: () => void;
        const held = new Promise<void>((r) => (release = r));
        let locked!: () => void;
        const isLocked = new Promise<void>((r) => (locked = r));
        const tx = app.server.store.transaction(async (q) => {
          await q.query("lock table agent_keys in access exclusive mode");
          locked();
          await held;
        });
        await isLocked;
        return () => (release(), tx);
      };
      const proof = async (c: RawClient) => ({ t: "proof", signature: new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, m.privateKey, new Uint8Array(decode(Challenge, (await c.next())!)!.nonce))) });

      let release = await holdKeys();
      const early = new RawClient(app.url, "198.51.100.81", presenting(m.id, m.key));
      await early.opened;
      early.send(await proof(early));
      expect(await early.closedWithin(300)).toBeNull();
      await release();
      expect(decode(Welcome, (await early.next())!)).toMatchObject({ machine_id: m.id });
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online");
      early.close();
      await eventually(async () => (await get(m.id)).status === "offline", 3_000, "offline");

      release = await holdKeys();
      const twice = new RawClient(app.url, "198.51.100.82", presenting(m.id, m.key));
      await twice.opened;
      const p = await proof(twice);
      twice.send(p);
      twice.send(p);
      const left = new RawClient(app.url, "198.51.100.83", presenting(m.id, m.key));
      await left.opened;
      expect(decode(Challenge, (await left.next())!)).not.toBeNull();
      left.close();
      await left.closed;
      expect(await twice.closedWithin(3_000)).toBe(CLOSE.BAD_MESSAGE);
      await release();
      await eventually(async () => (await refusals(app, "ip = $1", ["198.51.100.83"])).length === 1, 3_000, "the one that left is audited");
      expect((await refusals(app, "ip = $1", ["198.51.100.83"]))[0]).toMatchObject({ actor_id: m.id, details: { reason: "no_proof", close: 1000, by: "agent" } });
      expect((await refusals(app, "ip = $1", ["198.51.100.82"])).map((r) => r.details.reason)).toEqual(["out_of_order"]);
      expect((await get(m.id)).status).toBe("offline");

      // While the key is unknown, no frame bigger than a proof can be is held (4000); a
      // challenged agent that sends no proof in time gets 4014, as after a lookup.
      release = await holdKeys();
      AGENT_SOCKET_LIMITS.handshakeMs = 400;
      const big = new RawClient(app.url, "198.51.100.84", presenting(m.id, m.key));
      const silent = new RawClient(app.url, "198.51.100.85", presenting(m.id, m.key));
      // A key of no machine that sends a frame and leaves before the lookup: still audited as such.
      const stranger = new RawClient(app.url, "198.51.100.86", presenting(m.id, noSuchKey()));
      await Promise.all([big.opened, silent.opened, stranger.opened]);
      big.sendRaw(new Uint8Array(300 * 1024));
      stranger.sendRaw(new Uint8Array(64));
      stranger.close();
      await stranger.closed;
      expect(await big.closedWithin(3_000)).toBe(CLOSE.BAD_MESSAGE);
      expect(await silent.closedWithin(3_000)).toBe(CLOSE.PROOF_TIMEOUT);
      await release();
      await eventually(async () => (await refusals(app, "ip = $1", ["198.51.100.86"])).length === 1, 3_000, "the stranger is audited");
      expect((await refusals(app, "ip = $1", ["198.51.100.86"]))[0]!.details).toMatchObject({ reason: "unknown_key", by: "agent" });

      // A text frame in the proof's place, sent before the key is found, is no proof (4005),
      // as it is after the lookup. (The handshake's clock is the shipped one again.)
      AGENT_SOCKET_LIMITS.handshakeMs = LIMITS.handshakeMs;
      release = await holdKeys();
      const text = new RawClient(app.url, "198.51.100.87", presenting(m.id, m.key));
      await text.opened;
      expect(decode(Challenge, (await text.next())!)).not.toBeNull();
      text.sendRaw("proof");
      expect(await text.closedWithin(300)).toBeNull();
      await release();
      expect(await text.closedWithin(3_000)).toBe(CLOSE.BAD_SIGNATURE);
      await eventually(async () => (await refusals(app, "ip = $1", ["198.51.100.87"])).length === 1, 3_000, "the text frame is audited");
      expect((await refusals(app, "ip = $1", ["198.51.100.87"]))[0]).toMatchObject({ actor_id: m.id, details: { reason: "not_a_proof", close: CLOSE.BAD_SIGNATURE } });
    });

    test("an inventory with text the database cannot store is a malformed frame (4000), refused alone: agents connecting beside it are welcomed", async () => {
      const bad = await machine();
      const good = await Promise.all(Array.from({ length: 6 }, () => machine()));
      const badSocket = socket();
      const [badWelcomed, ...goodWelcomed] = await Promise.all([
        badSocket.handshake(bad.id, bad.key, bad.privateKey, { inventory: { hostname: "a\u0000b" } }),
        ...good.map((m, i) => socket().handshake(m.id, m.key, m.privateKey, { inventory: { hostname: `good-${i}` } })),
      ]);
      expect(badWelcomed).toBe(false);
      expect((await badSocket.closed).code).toBe(CLOSE.BAD_MESSAGE);
      expect(goodWelcomed).toEqual(good.map(() => true));
      for (const [i, m] of good.entries()) await eventually(async () => (await get(m.id)).inventory?.hostname === `good-${i}`, 3_000, "good inventory");
      expect(await get(bad.id)).toMatchObject({ status: "offline", inventory: {} });
      // Once bound, a status with such text closes the socket the same way, and the inventory stays.
      const again = socket();
      expect(await again.handshake(bad.id, bad.key, bad.privateKey, { inventory: { hostname: "clean" } })).toBe(true);
      await eventually(async () => (await get(bad.id)).inventory?.hostname === "clean", 3_000, "clean inventory");
      again.status({ hostname: "x", users: ["u\u0000"] });
      expect((await again.closed).code).toBe(CLOSE.BAD_MESSAGE);
      expect((await get(bad.id)).inventory).toEqual({ hostname: "clean" });
    });

    test("an agent's close reason with a NUL is not journaled as such: the machine goes offline as with any close (it stayed online)", async () => {
      const m = await machine();
      const agent = socket();
      expect(await agent.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online");
      agent.closeWith(4000, "bye\u0000now");
      await eventually(async () => (await get(m.id)).status === "offline", 3_000, "offline");
      const again = socket();
      expect(await again.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online again");
    });

    test("a revoked key, a removed machine: refused at connect, and disconnected within a second when live", async () => {
      const m = await machine();
      const live = socket();
      expect(await live.handshake(m.id, m.key, m.privateKey)).toBe(true);
      const keys = await app.call("GET", `/api/machines/${m.id}/keys`, { token: app.adminToken });
      const revokedAt = Date.now();
      expect((await app.call("DELETE", `/api/machines/${m.id}/keys/${keys.body.keys[0].id}`, { token: app.adminToken })).status).toBe(204);
      expect((await live.closed).code).toBe(CLOSE.KEY_REVOKED);
      expect(Date.now() - revokedAt).toBeLessThan(1_000);
      const again = socket();
      await again.handshake(m.id, m.key, m.privateKey);
      expect((await again.closed).code).toBe(CLOSE.KEY_REVOKED);

      const n = await machine();
      const other = socket();
      expect(await other.handshake(n.id, n.key, n.privateKey)).toBe(true);
      const removedAt = Date.now();
      expect((await app.call("DELETE", `/api/machines/${n.id}`, { token: app.adminToken })).status).toBe(204);
      const code = (await other.closed).code;
      expect([CLOSE.MACHINE_REMOVED, CLOSE.KEY_REVOKED] as number[]).toContain(code);
      expect(Date.now() - removedAt).toBeLessThan(1_000);
    });

    test("a pending machine is refused", async () => {
      const m = await machine();
      await app.server.store.query("update machines set enrollment_state = 'pending' where id = $1", [m.id]);
      const s = socket();
      await s.handshake(m.id, m.key, m.privateKey);
      expect((await s.closed).code).toBe(CLOSE.MACHINE_PENDING);
    });

    test("frames over 4 MiB are refused", async () => {
      const m = await machine();
      const s = socket();
      expect(await s.handshake(m.id, m.key, m.privateKey)).toBe(true);
      s.sendRaw(new Uint8Array(4 * 1024 * 1024 + 16));
      expect((await s.closed).code).toBe(CLOSE.TOO_BIG);
    });

    test("a machine id in upper case is the same machine", async () => {
      const m = await machine();
      const agent = socket();
      expect(await agent.handshake(m.id.toUpperCase(), m.key, m.privateKey)).toBe(true);
      expect(agent.welcome?.machine_id).toBe(m.id);
      agent.close();
    });

    test("a hello of another protocol version has its own close code (4012), audited", async () => {
      const m = await machine();
      const s = new RawClient(app.url, "198.51.100.40");
      await s.opened;
      s.send(hello(m.id, m.key, { protocol: PROTOCOL_VERSION + 1, extra: "a v2 field" }));
      expect((await s.closed).code).toBe(CLOSE.UNSUPPORTED_PROTOCOL);
      const rows = await refusals(app, "ip = $1", ["198.51.100.40"]);
      expect(rows.map((r) => r.details)).toEqual([{ close: CLOSE.UNSUPPORTED_PROTOCOL, reason: "unsupported_protocol", protocol: PROTOCOL_VERSION + 1 }]);
    });

    test("a key without its proof is refused and audited: the agent that leaves after its challenge, and the one whose clock runs out (4014)", async () => {
      const m = await machine();
      const left = new RawClient(app.url, "198.51.100.41");
      await left.opened;
      left.send(hello(m.id, m.key));
      expect(decode(Challenge, (await left.next())!)).not.toBeNull();
      left.close();
      await left.closed;
      await eventually(async () => (await refusals(app, "ip = $1", ["198.51.100.41"])).length === 1, 3_000, "audited");
      expect((await refusals(app, "ip = $1", ["198.51.100.41"]))[0]).toMatchObject({ actor_type: "agent", actor_id: m.id, target_id: m.id, details: { reason: "no_proof", close: 1000, by: "agent" } });

      AGENT_SOCKET_LIMITS.handshakeMs = 500;
      const waited = new RawClient(app.url, "198.51.100.42");
      await waited.opened;
      waited.send(hello(m.id, m.key));
      expect(decode(Challenge, (await waited.next())!)).not.toBeNull();
      expect(await waited.closedWithin(3_000)).toBe(CLOSE.PROOF_TIMEOUT);
      expect((await refusals(app, "ip = $1", ["198.51.100.42"])).map((r) => [r.target_id, r.details.reason])).toEqual([[m.id, "proof_timeout"]]);
      expect((await get(m.id)).status).toBe("offline");
    });

    test("a refusal names only the machine whose key matched: a machine id the client merely claims goes into the details", async () => {
      const m = await machine();
      const n = await machine();
      const from = "198.51.100.43";
      const cases: Array<[string, number]> = [[noSuchKey(), CLOSE.UNKNOWN_KEY], [app.adminToken, CLOSE.WRONG_PLANE], ["not-a-key", CLOSE.UNKNOWN_KEY], [n.key, CLOSE.UNKNOWN_KEY]];
      for (const [key, code] of cases) {
        const s = new RawClient(app.url, from);
        await s.opened;
        s.send(hello(m.id, key));
        expect((await s.closed).code).toBe(code);
      }
      const rows = await refusals(app, "ip = $1", [from]);
      expect(rows.map((r) => [r.tenant_id, r.actor_type, r.actor_id, r.target_id, r.details.reason, r.details.claimed_machine_id])).toEqual([
        ["00000000-0000-0000-0000-000000000001", "anonymous", null, null, "unknown_key", m.id],
        ["00000000-0000-0000-0000-000000000001", "anonymous", null, null, "wrong_plane", m.id],
        ["00000000-0000-0000-0000-000000000001", "anonymous", null, null, "unknown_key", m.id],
        // n's key matched: n is named (its tenant gets the row), m only claimed.
        [rows[3]!.tenant_id, "agent", n.id, n.id, "unknown_key", m.id],
      ]);
      expect(JSON.stringify(rows)).not.toContain(n.key);
    });

    // PostgreSQL only: another connection holds the audit table, as a hung database would.
    test.skipIf(flavor !== "postgres")("a refusal whose audit row cannot be written closes anyway, after its wait, and the row is written once it can be", async () => {
      const m = await machine();
      const from = "198.51.100.47";
      const other = postgres(process.env.TEST_DATABASE_URL!, { max: 1, onnotice: () => {} });
      let release = () => {};
      const held = new Promise<void>((resolve) => (release = resolve));
      let locked = () => {};
      const isLocked = new Promise<void>((resolve) => (locked = resolve));
      const tx = other.begin(async (sql) => {
        await sql.unsafe(`lock table ${app.db.config.searchPath}.audit_events in exclusive mode`);
        locked();
        await held;
      });
      try {
        await isLocked;
        const s = new RawClient(app.url, from);
        await s.opened;
        s.send(hello(m.id, noSuchKey()));
        // Closed with its code while the row is still waiting for the lock.
        expect(await s.closedWithin(10_000)).toBe(CLOSE.UNKNOWN_KEY);
        expect(await refusals(app, "ip = $1", [from])).toEqual([]);
      } finally {
        release();
        await tx;
        await other.end();
      }
      await eventually(async () => (await refusals(app, "ip = $1", [from])).length === 1, 10_000);
    });

    test("refusal audits are limited per address: past the budget, one summary row", async () => {
      Object.assign(AGENT_SOCKET_LIMITS, { auditBurst: 3, auditEveryMs: 60_000, auditSummaryMs: 500 });
      const m = await machine();
      const noisy = "198.51.100.44";
      for (let i = 0; i < 10; i++) {
        const s = new RawClient(app.url, noisy);
        await s.opened;
        s.send(hello(m.id, noSuchKey()));
        expect((await s.closed).code).toBe(CLOSE.UNKNOWN_KEY);
      }
      // Another address has a budget of its own.
      const quiet = new RawClient(app.url, "198.51.100.45");
      await quiet.opened;
      quiet.send(hello(m.id, noSuchKey()));
      expect((await quiet.closed).code).toBe(CLOSE.UNKNOWN_KEY);
      expect(await refusals(app, "ip = $1", ["198.51.100.45"])).toHaveLength(1);
      await eventually(async () => (await refusals(app, "ip = $1", [noisy])).length === 4, 3_000, "summary");
      const rows = await refusals(app, "ip = $1", [noisy]);
      expect(rows.slice(0, 3).map((r) => r.details.reason)).toEqual(["unknown_key", "unknown_key", "unknown_key"]);
      expect(rows[3]).toMatchObject({ actor_type: "anonymous", target_id: null, details: { summary: true, refusals: 7, reasons: { unknown_key: 7 } } });

      // What is counted when the server stops is written by its last flush, not lost with the timer.
      Object.assign(AGENT_SOCKET_LIMITS, { auditSummaryMs: 600_000 });
      const late = "198.51.100.46";
      for (let i = 0; i < 5; i++) {
        const s = new RawClient(app.url, late);
        await s.opened;
        s.send(hello(m.id, noSuchKey()));
        expect((await s.closed).code).toBe(CLOSE.UNKNOWN_KEY);
      }
      expect(await refusals(app, "ip = $1", [late])).toHaveLength(3);
      await app.server.connections.flush(); // as server.stop() does, before the audit's own flush
      await eventually(async () => (await refusals(app, "ip = $1", [late])).length === 4, 3_000, "the summary at shutdown");
      expect((await refusals(app, "ip = $1", [late]))[3]).toMatchObject({ details: { summary: true, refusals: 2 } });
    });
  });
}

/** The handshake limit (TETHER_AGENT_HANDSHAKES): in a storm, agents past it wait their turn. */
describe("agent socket: handshakes beyond the limit wait their turn", () => {
  let app: TestApp;
  let site: SiteWithKey;
  beforeAll(async () => {
    app = await startTestApp("pglite", { env: { TETHER_AGENT_HANDSHAKES: "2", TETHER_TRUSTED_PROXIES: "127.0.0.1" } });
    site = await siteWithKey(app);
  }, 60_000);
  afterAll(async () => {
    await app?.close();
  });

  test("a waiting agent's hello is answered once a slot frees; one that leaves while waiting changes nothing", async () => {
    const machines = await Promise.all([0, 1, 2, 3].map(() => enrolledAgent(app, site)));
    const hello = (m: (typeof machines)[number]) => ({ t: "hello", machine_id: m.id, key: m.key, agent_version: "test-1", protocol: PROTOCOL_VERSION });
    const sockets = machines.map(() => new TestAgentSocket(app.url));
    try {
      // Two handshakes hold both slots: challenged, no proof yet.
      const challenges: Array<ReturnType<typeof Challenge.parse>> = [];
      for (const i of [0, 1]) {
        await sockets[i]!.open();
        sockets[i]!.send(hello(machines[i]!));
        challenges.push(decode(Challenge, (await sockets[i]!.next())!)!);
      }
      // The third and fourth wait: their hellos get no challenge while the slots are taken.
      for (const i of [2, 3]) {
        await sockets[i]!.open();
        sockets[i]!.send(hello(machines[i]!));
      }
      expect(await sockets[2]!.next(400)).toBeNull();
      sockets[3]!.close(); // leaves while waiting
      // The first proves and is bound: its slot goes to the third, whose hello is answered now.
      const signature = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, machines[0]!.privateKey, new Uint8Array(challenges[0]!.nonce)));
      sockets[0]!.send({ t: "proof", signature });
      expect(decode(Welcome, (await sockets[0]!.next())!)).toMatchObject({ machine_id: machines[0]!.id });
      const third = decode(Challenge, (await sockets[2]!.next(3_000))!);
      expect(third?.nonce.byteLength).toBe(32);
      const sig2 = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, machines[2]!.privateKey, new Uint8Array(third!.nonce)));
      sockets[2]!.send({ t: "proof", signature: sig2 });
      expect(decode(Welcome, (await sockets[2]!.next())!)).toMatchObject({ machine_id: machines[2]!.id });
      // The agent that left never came online; a later connect of it gets a slot as usual.
      expect((await sockets[3]!.closed).code).toBe(1000);
      const again = new TestAgentSocket(app.url);
      sockets.push(again);
      expect(await again.handshake(machines[3]!.id, machines[3]!.key, machines[3]!.privateKey)).toBe(true);
      const status = async (id: string) => (await app.call("GET", `/api/machines/${id}`, { token: app.adminToken })).body.status;
      await eventually(async () => (await status(machines[0]!.id)) === "online" && (await status(machines[2]!.id)) === "online" && (await status(machines[3]!.id)) === "online", 3_000, "online");
      expect(await status(machines[1]!.id)).toBe("offline");
    } finally {
      for (const s of sockets) s.close();
    }
  });

  /** Holds both slots: two agents challenged, with no proof yet. */
  const holdSlots = async () => {
    const holders = await Promise.all([0, 1].map(() => enrolledAgent(app, site)));
    return Promise.all(holders.map(async (m) => {
      const s = new RawClient(app.url);
      await s.opened;
      s.send(hello(m.id, m.key));
      expect(decode(Challenge, (await s.next())!)).not.toBeNull();
      return s;
    }));
  };

  test("sockets that send nothing hold no slot, and are closed by a clock of their own (4001, audited)", async () => {
    AGENT_SOCKET_LIMITS.helloMs = 400;
    const idle = [0, 1, 2, 3].map(() => new RawClient(app.url, "203.0.113.9"));
    await Promise.all(idle.map((s) => s.opened));
    const m = await enrolledAgent(app, site);
    const agent = new TestAgentSocket(app.url);
    try {
      const started = Date.now();
      expect(await agent.handshake(m.id, m.key, m.privateKey)).toBe(true);
      expect(Date.now() - started).toBeLessThan(1_000);
      for (const s of idle) expect(await s.closedWithin(2_000)).toBe(CLOSE.HANDSHAKE_TIMEOUT);
      await eventually(async () => (await refusals(app, "ip = $1", ["203.0.113.9"])).length === 4, 3_000, "audited");
      expect((await refusals(app, "ip = $1", ["203.0.113.9"])).map((r) => r.details.reason)).toEqual(["no_hello", "no_hello", "no_hello", "no_hello"]);
    } finally {
      agent.close();
      for (const s of idle) s.close();
    }
  });

  test("the wait for a slot is capped per address and in all (4013); before its challenge a socket may send its hello only", async () => {
    // Two slots: at most 6 waiting in all, 2 per address.
    Object.assign(AGENT_SOCKET_LIMITS, { queuedPerSlot: 3, queuedPerAddressPerSlot: 1 });
    const m = await enrolledAgent(app, site);
    const holders = await holdSlots();
    const waiting: RawClient[] = [];
    const wait = async (from: string) => {
      const s = new RawClient(app.url, from);
      await s.opened;
      s.send(hello(m.id, noSuchKey()));
      return s;
    };
    try {
      for (const from of ["203.0.113.1", "203.0.113.1", "203.0.113.2", "203.0.113.2"]) waiting.push(await wait(from));
      expect(await waiting[0]!.closedWithin(300)).toBeNull();
      // A third from one address: busy.
      expect(await (await wait("203.0.113.1")).closedWithin(3_000)).toBe(CLOSE.BUSY);
      for (const from of ["203.0.113.3", "203.0.113.3"]) waiting.push(await wait(from));
      // Six waiting: busy for any address.
      expect(await (await wait("203.0.113.4")).closedWithin(3_000)).toBe(CLOSE.BUSY);
      expect((await refusals(app, "ip in ($1, $2)", ["203.0.113.1", "203.0.113.4"])).map((r) => [r.ip, r.details.reason, r.details.close])).toEqual([
        ["203.0.113.1", "busy", CLOSE.BUSY], ["203.0.113.4", "busy", CLOSE.BUSY],
      ]);
      // A second frame before the challenge is out of order, and frees its place.
      waiting[0]!.send({ t: "heartbeat", seq: 1 });
      expect(await waiting[0]!.closedWithin(3_000)).toBe(CLOSE.BAD_MESSAGE);
      expect(await (await wait("203.0.113.4")).closedWithin(300)).toBeNull();
      // More than a hello's size before the challenge is no hello.
      const big = new RawClient(app.url, "203.0.113.5");
      await big.opened;
      big.sendRaw(new Uint8Array(encode({ ...hello(m.id, noSuchKey()), agent_version: "x".repeat(3_000) } as unknown as AgentMessage)));
      expect(await big.closedWithin(3_000)).toBe(CLOSE.BAD_MESSAGE);
      // The slots free: every waiting hello is answered (their keys are of no machine).
      for (const h of holders) h.close();
      for (const s of waiting.slice(1)) expect(await s.closedWithin(3_000)).toBe(CLOSE.UNKNOWN_KEY);
    } finally {
      for (const s of [...holders, ...waiting]) s.close();
    }
  });

  test("a socket waits for a slot no longer than the queue's clock (4013, audited)", async () => {
    AGENT_SOCKET_LIMITS.queuedMs = 400;
    const m = await enrolledAgent(app, site);
    const holders = await holdSlots();
    const s = new RawClient(app.url, "203.0.113.6");
    try {
      await s.opened;
      s.send(hello(m.id, m.key));
      expect(await s.closedWithin(3_000)).toBe(CLOSE.BUSY);
      expect((await refusals(app, "ip = $1", ["203.0.113.6"])).map((r) => [r.target_id, r.details.reason, r.details.claimed_machine_id])).toEqual([[null, "queue_timeout", m.id]]);
    } finally {
      for (const h of [...holders, s]) h.close();
    }
  });

});
