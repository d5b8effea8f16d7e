import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Packr } from "msgpackr";
import { CLOSE, PROTOCOL_VERSION } from "../../src/protocol/agent.ts";
import { DATA_HEADER } from "../../src/protocol/frames.ts";
import { VIEWER_CLOSE } from "../../src/protocol/relay.ts";
import { SUPPORT_CLOSE } from "../../src/protocol/support.ts";
import { agentIdentity, presenting, TestAgentSocket } from "../helpers/agent-client.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import { errorCapture, expectReady, Fuzz as BaseFuzz, SEED } from "../helpers/fuzz.ts";
import { TestViewer } from "../helpers/viewer-client.ts";
import { enroll, enrollBody, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";

/**
 * Bounded fuzzing of the inputs a client controls: agent frames on /ws/agent (before the
 * hello, after the challenge, and bound) and the hello its upgrade's headers present, viewer frames on /ws/viewer, support-code hellos on
 * /ws/support, and HTTP request bodies and queries. Frames and bodies are random bytes, random msgpack or JSON values, valid
 * messages with fields replaced, dropped or added, and truncated ones; bound agents also close
 * with random reasons. Whatever comes in, the server answers with a documented refusal (a close
 * code, a 4xx with the error envelope), never a server error; it logs no error (a write that
 * failed in the background, a journal commit, shows only there); well-behaved clients connected
 * beside the fuzzing are not disturbed; and afterwards it is ready, with no failed actor, and
 * serves as before.
 *
 * Deterministic: FUZZ_SEED picks another sequence (the seed is in every failure message).
 */
const PER_TARGET = 30;

const packr = new Packr({ useRecords: false });

/** The shared generator, plus whole agent and viewer frames. */
class Fuzz extends BaseFuzz {
  /** One frame: random bytes, random msgpack, a mutated or truncated valid message, a data frame, or text. */
  frame(bases: Array<Record<string, unknown>>): Uint8Array | string {
    const pack = (v: unknown) => {
      try {
        return packr.pack(v);
      } catch {
        return this.bytes(64); // a value msgpack cannot hold
      }
    };
    return this.pick<() => Uint8Array | string>([
      () => this.bytes(512),
      () => pack(this.value()),
      () => pack(this.mutate(this.pick(bases))),
      () => pack(this.mutate(this.pick(bases))),
      () => pack(this.mutate(this.pick(bases))),
      () => {
        const whole = pack(this.pick(bases));
        return whole.subarray(0, this.int(whole.length));
      },
      () => {
        const f = new Uint8Array(DATA_HEADER + this.int(200));
        f.set(this.bytes(f.length), 0);
        f[0] = 0;
        return f;
      },
      () => this.string(),
    ])();
  }
}

/** Resolves with the close code, or null if the socket is still open after `ms`. */
const closedWithin = (closed: Promise<{ code: number }>, ms: number) =>
  Promise.race([closed.then((c) => c.code), Bun.sleep(ms).then(() => null)]);

const AGENT_CODES = new Set<number>([1000, 1009, CLOSE.UNSUPPORTED_PROTOCOL, CLOSE.BAD_MESSAGE, CLOSE.HANDSHAKE_TIMEOUT, CLOSE.UNKNOWN_KEY, CLOSE.WRONG_PLANE, CLOSE.KEY_REVOKED, CLOSE.BAD_SIGNATURE, CLOSE.MACHINE_PENDING, CLOSE.MACHINE_REMOVED, CLOSE.SUPERSEDED]);
const VIEWER_CODES = new Set<number>([1009, VIEWER_CLOSE.BAD_MESSAGE, VIEWER_CLOSE.THROTTLED]);
const SUPPORT_CODES = new Set<number>([CLOSE.BAD_MESSAGE, SUPPORT_CLOSE.BAD_CODE, SUPPORT_CLOSE.LOCKED_OUT]);

for (const flavor of FLAVORS) {
  describe(`fuzzing the inputs (${flavor}, seed ${SEED})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    const closers: Array<() => void> = [];
    /** The server's error-level log lines. */
    const { logger, errors } = errorCapture();
    const fuzz = new Fuzz(SEED);
    const machine = async () => {
      const id = await agentIdentity();
      const r = await enroll(app, await enrollBody(site, { public_key: id.publicKey }));
      return { id: r.body.machine_id as string, key: r.body.key as string, privateKey: id.keys.privateKey };
    };
    const agentSocket = () => {
      const s = new TestAgentSocket(app.url);
      closers.push(() => s.close());
      return s;
    };
    const send = (s: { sendRaw(b: Uint8Array): void }, f: Uint8Array | string, ws?: () => WebSocket) => (typeof f === "string" && ws ? ws().send(f) : s.sendRaw(typeof f === "string" ? new TextEncoder().encode(f) : f));
    /** Ready, with no failed actor, and nothing logged as an error. */
    const ready = () => expectReady(app, errors);

    beforeAll(async () => {
      app = await startTestApp(flavor, { logger });
      site = await siteWithKey(app);
    }, 60_000);
    afterAll(async () => {
      for (const c of closers) c();
      await app?.close();
    });

    test("agent frames: before the hello, after the challenge and once bound, every refusal is a documented close", async () => {
      const target = await machine();
      const bystander = await machine();
      const calm = agentSocket();
      expect(await calm.handshake(bystander.id, bystander.key, bystander.privateKey, { inventory: { hostname: "calm" } })).toBe(true);
      const bases: Array<Record<string, unknown>> = [
        { t: "hello", machine_id: target.id, key: target.key, agent_version: "fuzz", protocol: PROTOCOL_VERSION },
        { t: "proof", signature: new Uint8Array(64), inventory: { hostname: "h", users: ["u"], disks: [{ mount: "/", size_bytes: 1, free_bytes: 1 }] } },
        { t: "status", inventory: { os: { name: "Linux", version: "6" }, private_ips: ["10.0.0.1"], elevated: true } },
        { t: "heartbeat", seq: 1 },
        { t: "consent", session: crypto.randomUUID(), granted: true },
        { t: "ch.opened", channel: 7 },
        { t: "files.listing", channel: 7, path: "/", entries: [{ name: "a", type: "file", size: 1 }] },
        { t: "chat", session: crypto.randomUUID(), text: "hi" },
      ];
      const codes: number[] = [];
      const observe = async (s: TestAgentSocket) => {
        const code = await closedWithin(s.closed, 300);
        if (code !== null) codes.push(code);
        s.close();
      };
      // Before the hello, and in the proof's place after a real hello.
      for (let i = 0; i < 100; i++) {
        const s = agentSocket();
        await s.open();
        if (i % 2 === 1) {
          s.send({ t: "hello", machine_id: target.id, key: target.key, agent_version: "fuzz", protocol: PROTOCOL_VERSION });
          await s.next(2_000);
        }
        for (let n = 1 + fuzz.int(3); n > 0; n--) send(s, fuzz.frame(bases));
        await observe(s);
      }
      // A hello presented in the upgrade's headers: valid (then junk in the proof's place, which
      // may come before the key is found) or with one or two headers dropped or mangled.
      const valid = presenting(target.id, target.key);
      for (let i = 0; i < 40; i++) {
        const headers: Record<string, string> = { ...valid };
        for (let n = i % 2 === 0 ? 0 : 1 + fuzz.int(2); n > 0; n--) {
          const name = fuzz.pick(Object.keys(valid));
          const v = fuzz.string();
          if (fuzz.chance(0.3)) delete headers[name];
          else headers[name] = /^[\x20-\x7e]*$/.test(v) ? v : fuzz.hex(8);
        }
        const s = new TestAgentSocket(app.url, headers);
        closers.push(() => s.close());
        await s.open();
        for (let n = fuzz.int(3); n > 0; n--) send(s, fuzz.frame(bases));
        await observe(s);
      }
      // Bound: a proved agent sending junk among its heartbeats.
      for (let i = 0; i < 20; i++) {
        const s = agentSocket();
        expect(await s.handshake(target.id, target.key, target.privateKey)).toBe(true);
        for (let n = 0; n < 25; n++) {
          send(s, fuzz.frame(bases));
          if (n % 5 === 0) s.heartbeat(n);
        }
        await observe(s);
      }
      // Bound agents leaving with close reasons of their own (journaled with the disconnect).
      for (let i = 0; i < 20; i++) {
        const s = agentSocket();
        expect(await s.handshake(target.id, target.key, target.privateKey)).toBe(true);
        try {
          s.closeWith(fuzz.pick([1000, 4000, 4999]), fuzz.string().slice(0, 30));
        } catch {} // a reason over 123 bytes of UTF-8: the client refuses it
        await s.closed;
      }
      const unexpected = codes.filter((c) => !AGENT_CODES.has(c));
      expect({ seed: SEED, unexpected }).toEqual({ seed: SEED, unexpected: [] });
      expect(codes.length).toBeGreaterThan(20);
      // The bystander was not disturbed, the target still connects, and nothing is broken.
      expect(await closedWithin(calm.closed, 0)).toBeNull();
      expect((await app.call("GET", `/api/machines/${bystander.id}`, { token: app.adminToken })).body).toMatchObject({ status: "online", inventory: { hostname: "calm" } });
      const again = agentSocket();
      expect(await again.handshake(target.id, target.key, target.privateKey, { inventory: { hostname: "after" } })).toBe(true);
      await eventually(async () => (await app.call("GET", `/api/machines/${target.id}`, { token: app.adminToken })).body?.inventory?.hostname === "after", 3_000, "the target's inventory");
      const listed = await app.call("GET", "/api/machines?limit=500", { token: app.adminToken });
      expect(listed.body.machines.filter((m: { id: string }) => m.id === target.id)).toHaveLength(1);
      await ready();
    }, 60_000);

    test("viewer frames: every refusal is a documented close; the session, its agent and a watching viewer carry on", async () => {
      const m = await machine();
      const agent = agentSocket();
      expect(await agent.handshake(m.id, m.key, m.privateKey)).toBe(true);
      void (async () => {
        while (await agent.next(60_000)); // an agent that takes everything and answers nothing
      })();
      const session = await app.call("POST", "/api/sessions", { token: app.adminToken, body: { machine_id: m.id } });
      expect(session.status).toBe(201);
      const id = session.body.id as string;
      await eventually(async () => (await app.call("GET", `/api/sessions/${id}`, { token: app.adminToken })).body.state === "active", 3_000, "active");
      const viewer = async (access: "control" | "view") => {
        const token = (await app.call("POST", `/api/sessions/${id}/viewer-token`, { token: app.adminToken, body: { access } })).body.token as string;
        const v = new TestViewer(app.url, id, token);
        closers.push(() => v.close());
        await v.open();
        await v.waitFor((x) => x.t === "joined", 5_000, "joined");
        return v;
      };
      const watcher = await viewer("view");
      const bases: Array<Record<string, unknown>> = [
        { t: "term.open", req: "r1", cols: 80, rows: 24 },
        { t: "term.resize", channel: 1, cols: 100, rows: 30 },
        { t: "files.list", req: "r2", path: "/tmp" },
        { t: "files.download", req: "r3", path: "/etc/hostname" },
        { t: "files.upload", req: "r4", path: "/tmp/x", size: 10 },
        { t: "cmd.run", req: "r5", argv: ["true"] },
        { t: "ch.close", channel: 1 },
        { t: "ch.ack", channel: 1, bytes: 10 },
        { t: "chat.send", text: "hello" },
      ];
      const codes: number[] = [];
      for (let i = 0; i < 25; i++) {
        const v = await viewer("control");
        const ws = () => (v as unknown as { ws: WebSocket }).ws;
        for (let n = 0; n < 25; n++) send(v, fuzz.frame(bases), ws);
        const code = await closedWithin(v.closed, 300);
        if (code !== null) codes.push(code);
        v.close();
      }
      const unexpected = codes.filter((c) => !VIEWER_CODES.has(c));
      expect({ seed: SEED, unexpected }).toEqual({ seed: SEED, unexpected: [] });
      expect(codes.length).toBeGreaterThan(5);
      expect(await closedWithin(watcher.closed, 0)).toBeNull();
      expect(await closedWithin(agent.closed, 0)).toBeNull();
      expect((await app.call("GET", `/api/sessions/${id}`, { token: app.adminToken })).body.state).toBe("active");
      await viewer("control");
      await ready();
    }, 60_000);

    test("support-code hellos on /ws/support: refused as malformed, a bad code or a lockout, nothing else", async () => {
      const bases = [{ t: "hello", code: "12345678", agent_version: "fuzz", protocol: PROTOCOL_VERSION, hostname: "h", user: "u" }];
      const codes: number[] = [];
      for (let i = 0; i < 40; i++) {
        const ws = new WebSocket(`${app.url.replace(/^http/, "ws")}/ws/support`);
        ws.binaryType = "arraybuffer";
        const closed = new Promise<{ code: number }>((resolve) => (ws.onclose = (e) => resolve({ code: e.code })));
        await new Promise((resolve) => (ws.onopen = resolve));
        const f = fuzz.frame(bases);
        ws.send(typeof f === "string" ? f : new Uint8Array(f));
        const code = await closedWithin(closed, 300);
        if (code !== null) codes.push(code);
        ws.close();
      }
      const unexpected = codes.filter((c) => !SUPPORT_CODES.has(c));
      expect({ seed: SEED, unexpected }).toEqual({ seed: SEED, unexpected: [] });
      expect(codes.length).toBeGreaterThan(30);
      await ready();
    }, 60_000);

    test("HTTP bodies and queries: 4xx with the error envelope, never a server error", async () => {
      const room = await app.call("POST", "/api/rooms", { token: app.adminToken, body: { name: "fuzz-room" } });
      const targets: Array<{ method: string; path: string; base: Record<string, unknown> }> = [
        { method: "POST", path: "/api/sites", base: { site_code: "FUZZ", display_name: "Fuzz", company: "Acme" } },
        { method: "PATCH", path: `/api/sites/${site.id}`, base: { display_name: "Fuzz" } },
        { method: "POST", path: "/api/users", base: { username: "fuzz", role: "technician", password: "long enough password" } },
        { method: "POST", path: "/api/tokens", base: { name: "fuzz", scopes: ["machines:read"] } },
        { method: "POST", path: "/api/sessions", base: { machine_id: crypto.randomUUID() } },
        { method: "POST", path: "/api/support-codes", base: {} },
        { method: "POST", path: "/api/rooms", base: { name: "r" } },
        { method: "POST", path: `/api/rooms/${room.body.id}/messages`, base: { body: "hello", client_id: "c1" } },
        { method: "POST", path: "/api/enroll", base: { site_code: site.code, enrollment_key: site.key, machine_uid: "u", hostname: "h", labels: {}, public_key: "AAAA" } },
      ];
      const statuses: string[] = [];
      for (const t of targets) {
        for (let i = 0; i < PER_TARGET; i++) {
          const pick = fuzz.int(5);
          const body = pick === 0 ? "{not json" : pick === 1 ? JSON.stringify(fuzz.value()) : JSON.stringify(fuzz.mutate(t.base));
          const res = await fetch(app.url + t.path, { method: t.method, headers: { authorization: `Bearer ${app.adminToken}`, "content-type": "application/json" }, body });
          const text = await res.text();
          statuses.push(`${t.method} ${t.path} ${res.status}`);
          expect({ seed: SEED, call: `${t.method} ${t.path}`, body: body.slice(0, 300), status: res.status < 500 ? "not 5xx" : res.status }).toEqual({ seed: SEED, call: `${t.method} ${t.path}`, body: body.slice(0, 300), status: "not 5xx" });
          if (res.status >= 400) expect(JSON.parse(text)).toMatchObject({ error_code: expect.any(String), status_code: res.status });
        }
      }
      for (let i = 0; i < 80; i++) {
        const q = encodeURIComponent(fuzz.string().slice(0, 200).toWellFormed());
        const path = fuzz.pick([`/api/machines?q=${q}`, `/api/machines?sort=${q}&limit=${q}`, `/api/audit?actor=${q}&type=${q}`, `/api/sessions?state=${q}`, `/api/machines/${q}`]);
        const res = await fetch(app.url + path, { headers: { authorization: `Bearer ${app.adminToken}` } });
        await res.body?.cancel();
        expect({ seed: SEED, path, status: res.status < 500 ? "not 5xx" : res.status }).toEqual({ seed: SEED, path, status: "not 5xx" });
      }
      expect(statuses.length).toBe(targets.length * PER_TARGET);
      await ready();
    }, 60_000);
  });
}
