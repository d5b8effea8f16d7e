import type { Recorder } from "../../src/recordings/recorder.ts";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { unpack } from "msgpackr";
import { channelOf, dataFrame, isDataFrame, payloadOf } from "../../src/protocol/frames.ts";
import { ChatToAgent, MAX_CHAT_TEXT, VIEWER_CLOSE } from "../../src/protocol/relay.ts";
import { INPUT_LIMITS } from "../../src/relay/throttle.ts";
import { agentIdentity, TestAgentSocket } from "../helpers/agent-client.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import { TestViewer } from "../helpers/viewer-client.ts";
import { enroll, enrollBody, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";

/**
 * The server side of sessions (S1, S3, S4, S5, S7) with a scripted agent on /ws/agent and real
 * viewers on /ws/viewer: lifecycle, viewer-token checks before the upgrade, channels routed by
 * the relay, view-only viewers, a stalled viewer cut off without slowing anyone, resume.
 */
class ScriptedAgent {
  readonly messages: any[] = [];
  readonly data: Uint8Array[] = [];
  constructor(readonly socket: TestAgentSocket) {}
  static async connect(app: TestApp, m: { id: string; key: string; privateKey: CryptoKey }) {
    const s = new TestAgentSocket(app.url);
    expect(await s.handshake(m.id, m.key, m.privateKey)).toBe(true);
    const agent = new ScriptedAgent(s);
    void agent.pump();
    return agent;
  }
  private async pump() {
    for (;;) {
      const f = await this.socket.next(60_000);
      if (!f) return;
      if (isDataFrame(f)) this.data.push(f.slice());
      else this.messages.push(unpack(f));
    }
  }
  async waitFor(pred: (m: any) => boolean, what: string, ms = 5_000): Promise<any> {
    const deadline = Date.now() + ms;
    for (let seen = 0; ; seen = 0) {
      for (; seen < this.messages.length; seen++) if (pred(this.messages[seen])) return this.messages.splice(seen, 1)[0];
      if (Date.now() > deadline) throw new Error(`agent: timed out waiting for ${what}: ${JSON.stringify(this.messages)}`);
      await Bun.sleep(20);
    }
  }
  send(m: Record<string, unknown>) {
    this.socket.send(m);
  }
  sendData(channel: number, payload: Uint8Array | string) {
    this.socket.sendRaw(dataFrame(channel, payload));
  }
}

/** An HTTP upgrade request to /ws/viewer: the status it gets before any socket exists. */
async function upgradeStatus(app: TestApp, session: string, token: string): Promise<number> {
  const res = await fetch(`${app.url}/ws/viewer?session=${session}&token=${encodeURIComponent(token)}`, {
    headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64") },
  });
  return res.status;
}

for (const flavor of FLAVORS) {
  describe(`sessions and the relay (${flavor})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    const cleanups: Array<() => void> = [];

    const machine = async () => {
      const id = await agentIdentity();
      const r = await enroll(app, await enrollBody(site, { public_key: id.publicKey }));
      return { id: r.body.machine_id as string, key: r.body.key as string, privateKey: id.keys.privateKey };
    };
    const openSession = async (machineId: string, token = app.adminToken) => app.call("POST", "/api/sessions", { token, body: { machine_id: machineId } });
    const viewerToken = async (session: string, access: "control" | "view" = "control", token = app.adminToken) =>
      (await app.call("POST", `/api/sessions/${session}/viewer-token`, { token, body: { access } })).body;
    const viewer = async (session: string, access: "control" | "view" = "control") => {
      const v = new TestViewer(app.url, session, (await viewerToken(session, access)).token);
      cleanups.push(() => v.close());
      await v.open();
      await v.waitFor((m) => m.t === "joined", 5_000, "joined");
      return v;
    };
    const getSession = async (id: string) => (await app.call("GET", `/api/sessions/${id}`, { token: app.adminToken })).body;
    /** A session started on a connected scripted agent. */
    const withAgentSession = async () => {
      const m = await machine();
      const agent = await ScriptedAgent.connect(app, m);
      cleanups.push(() => agent.socket.close());
      const s = (await openSession(m.id)).body;
      await agent.waitFor((x) => x.t === "session.start", "session.start");
      return { m, agent, s };
    };
    /** A session on a connected scripted agent, with a control viewer and a terminal it opened. */
    const withTerminal = async () => {
      const { m, agent, s } = await withAgentSession();
      const v = await viewer(s.id);
      v.send({ t: "term.open", req: "t1", cols: 80, rows: 24 });
      const open = await agent.waitFor((x) => x.t === "ch.open", "ch.open");
      agent.send({ t: "ch.opened", channel: open.channel });
      await v.waitFor((x) => x.t === "ch.opened");
      return { m, agent, s, v, open };
    };

    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_HEARTBEAT_MS: "200", TETHER_OFFLINE_AFTER_MS: "5000", TETHER_SESSION_GRACE_MS: "3000" } });
      site = await siteWithKey(app);
    }, 60_000);
    afterAll(async () => {
      for (const c of cleanups) c();
      await app?.close();
    });

    test("an unattended session starts on the connected agent; a terminal's bytes flow both ways through the relay", async () => {
      const m = await machine();
      const agent = await ScriptedAgent.connect(app, m);
      cleanups.push(() => agent.socket.close());
      const created = await openSession(m.id);
      expect(created.status).toBe(201);
      expect(created.body).toMatchObject({ kind: "unattended", machine_id: m.id, consent: "not_required" });
      const start = await agent.waitFor((x) => x.t === "session.start", "session.start");
      expect(start).toMatchObject({ session: created.body.id, kind: "unattended", technician: "admin", consent: "not_required", resume: false });
      await eventually(async () => (await getSession(created.body.id)).state === "active", 3_000, "active");

      const v = await viewer(created.body.id);
      expect(await agent.waitFor((x) => x.t === "notice", "notice")).toMatchObject({ text: "admin joined (control)" });
      v.send({ t: "term.open", req: "t1", cols: 100, rows: 30 });
      const open = await agent.waitFor((x) => x.t === "ch.open", "ch.open");
      expect(open).toMatchObject({ session: created.body.id, type: "term", cols: 100, rows: 30 });
      agent.send({ t: "ch.opened", channel: open.channel });
      expect(await v.waitFor((x) => x.t === "ch.opened")).toMatchObject({ req: "t1", channel: open.channel, type: "term" });

      agent.sendData(open.channel, "hello from the machine\r\n");
      await v.waitForText(open.channel, "hello from the machine");
      v.sendData(open.channel, "echo hi\n");
      await eventually(async () => agent.data.some((f) => channelOf(f) === open.channel && Buffer.from(payloadOf(f)).toString() === "echo hi\n"), 3_000, "input at the agent");

      v.send({ t: "term.resize", channel: open.channel, cols: 120, rows: 40 });
      expect(await agent.waitFor((x) => x.t === "ch.resize", "ch.resize")).toEqual({ t: "ch.resize", channel: open.channel, cols: 120, rows: 40 });
      agent.send({ t: "ch.closed", channel: open.channel, reason: "exit", exit_code: 0 });
      expect(await v.waitFor((x) => x.t === "ch.closed")).toMatchObject({ channel: open.channel, reason: "exit", exit_code: 0 });

      // The terminal was recorded at the server, and its .cast plays back what was shown.
      let recs: any[] = [];
      await eventually(async () => (recs = (await app.call("GET", `/api/sessions/${created.body.id}/recordings`, { token: app.adminToken })).body.recordings ?? []).length === 1 && recs[0].ended_at !== null, 5_000, "recording");
      const cast = await fetch(`${app.url}/api/recordings/${recs[0].id}/cast`, { headers: { authorization: `Bearer ${app.adminToken}` } });
      const lines = (await cast.text()).trim().split("\n").map((l) => JSON.parse(l));
      expect(lines[0]).toMatchObject({ version: 2, width: 100, height: 30 });
      expect(lines.slice(1).filter((e) => e[1] === "o").map((e) => e[2]).join("")).toBe("hello from the machine\r\n");
      expect(lines.slice(1).filter((e) => e[1] === "r").map((e) => e[2])).toEqual(["120x40"]);

      const events = async () => ((await app.call("GET", `/api/sessions/${created.body.id}/events`, { token: app.adminToken })).body.events as any[]).map((e) => e.type);
      await eventually(async () => (await events()).includes("channel.closed"), 3_000, "channel.closed event");
      expect(await events()).toEqual(["session.created", "agent.attached", "viewer.joined", "channel.opened", "channel.closed"]);
    });

    test("a view-only viewer sees everything and can do nothing", async () => {
      const { agent, s } = await withAgentSession();
      const control = await viewer(s.id, "control");
      const watcher = await viewer(s.id, "view");
      control.send({ t: "term.open", req: "t", cols: 80, rows: 24 });
      const open = await agent.waitFor((x) => x.t === "ch.open", "ch.open");
      agent.sendData(open.channel, "shared output");
      await watcher.waitForText(open.channel, "shared output");
      await control.waitForText(open.channel, "shared output");

      watcher.sendData(open.channel, "rm -rf /\n");
      expect(await watcher.waitFor((x) => x.t === "error")).toMatchObject({ code: "VIEW_ONLY" });
      watcher.send({ t: "term.open", req: "w", cols: 80, rows: 24 });
      expect(await watcher.waitFor((x) => x.t === "error" && x.req === "w")).toMatchObject({ code: "VIEW_ONLY" });
      await Bun.sleep(200);
      expect(agent.data.some((f) => Buffer.from(payloadOf(f)).toString().includes("rm -rf"))).toBe(false);
      expect(agent.messages.filter((x) => x.t === "ch.open")).toEqual([]);
      const list = await control.waitFor((x) => x.t === "viewers" && x.viewers.length === 2);
      expect(list.viewers.map((x: any) => x.access).sort()).toEqual(["control", "view"]);
    });

    test("the viewer socket checks the token before upgrading: 401 for other credentials, 403 for another session", async () => {
      const m = await machine();
      const a = (await openSession(m.id)).body;
      const b = (await openSession(m.id)).body;
      const tokenA = (await viewerToken(a.id)).token;
      expect(await upgradeStatus(app, a.id, tokenA)).toBe(101);
      expect(await upgradeStatus(app, b.id, tokenA)).toBe(403);
      expect(await upgradeStatus(app, a.id, app.adminToken)).toBe(401);
      const pat = (await app.call("POST", "/api/tokens", { token: app.adminToken, body: { name: `v${Date.now()}`, scopes: ["sessions:write"], expires_at: new Date(Date.now() + 86_400_000).toISOString() } })).body.token;
      expect(await upgradeStatus(app, a.id, pat)).toBe(401);
      expect(await upgradeStatus(app, a.id, tokenA.slice(0, -4) + "AAAA")).toBe(401);
      const expired = await app.server.viewerTokens.mint({ session: a.id, access: "control", userId: crypto.randomUUID(), name: "x", tenantId: "00000000-0000-0000-0000-000000000001" }, Date.now() - 10 * 60_000);
      expect(await upgradeStatus(app, a.id, expired.token)).toBe(401);
      const revoked = await viewerToken(a.id);
      // Revoked through another session's route: that revokes nothing of this session's…
      expect((await app.call("DELETE", `/api/sessions/${b.id}/viewer-tokens/${revoked.token_id}`, { token: app.adminToken })).status).toBe(204);
      expect(await upgradeStatus(app, a.id, revoked.token)).toBe(101);
      // …and does not keep its own session's revocation from counting.
      expect((await app.call("DELETE", `/api/sessions/${a.id}/viewer-tokens/${revoked.token_id}`, { token: app.adminToken })).status).toBe(204);
      expect(await upgradeStatus(app, a.id, revoked.token)).toBe(401);
      // A token is minted only after the authorization check: an auditor may read, not connect.
      const auditor = await app.user("auditor");
      expect((await app.call("POST", `/api/sessions/${a.id}/viewer-token`, { token: auditor.token, body: { access: "view" } })).status).toBe(403);
    });

    test("a viewer's input and control messages are throttled: the excess is dropped with a notice, a flood cuts it off", async () => {
      const { agent, v, open } = await withTerminal();

      // Resizes (each one a recording mark and a frame to the agent) far beyond a person's.
      for (let i = 0; i < 300; i++) v.send({ t: "term.resize", channel: open.channel, cols: 80 + (i % 50), rows: 24 });
      await v.waitFor((x) => x.t === "error" && x.code === "THROTTLED", 3_000, "a throttle notice");
      await Bun.sleep(300);
      const resizes = agent.messages.filter((x) => x.t === "ch.resize").length;
      expect(resizes).toBeGreaterThanOrEqual(INPUT_LIMITS.controlBurst);
      expect(resizes).toBeLessThan(INPUT_LIMITS.controlBurst + 50);
      // About 100 refused in a row: not yet a flood (200), so the viewer stays.
      expect(await Promise.race([v.closed.then(() => "closed"), Bun.sleep(100).then(() => "open")])).toBe("open");

      // Keystrokes past the frame limit, with the relay's clock stopped (so no token comes back
      // however slowly the server reads them): the burst passes, the rest is dropped, and 200
      // refused in a row cut the viewer off.
      const relay = app.server.relay as unknown as { now: () => number };
      const clock = relay.now;
      const stopped = clock();
      relay.now = () => stopped;
      try {
        const before = agent.data.length;
        for (let i = 0; i < INPUT_LIMITS.frameBurst + 2 * INPUT_LIMITS.maxRefusedInARow; i++) v.sendData(open.channel, "x");
        expect((await v.closed).code).toBe(VIEWER_CLOSE.THROTTLED);
        await Bun.sleep(200);
        expect(agent.data.length - before).toBeLessThanOrEqual(INPUT_LIMITS.frameBurst);
      } finally {
        relay.now = clock;
      }
    });

    test("joined is a viewer's first message: output meanwhile waits for it, input meanwhile is dropped; a refused viewer leaves no route", async () => {
      const { m, agent, s, open } = await withTerminal();

      // The session takes its time to answer the next viewer's join; the terminal talks meanwhile,
      // enough for the recorder to keep the frame itself, and hand it to its compressor thread
      // (which detaches it here) while the frame still waits for the viewer.
      const system = app.server.system as any;
      const ask = system.ask;
      const bulk = "z".repeat(6000);
      system.ask = async (address: string, event: any, ...rest: unknown[]) => {
        if (event?.type === "viewer.joined") {
          system.ask = ask;
          agent.sendData(open.channel, `output during the join ${bulk}\r\n`);
          await Bun.sleep(300);
          await (app.server.relay.recorder as Recorder).flush();
        }
        return ask.call(system, address, event, ...rest);
      };
      const late = new TestViewer(app.url, s.id, (await viewerToken(s.id)).token);
      cleanups.push(() => late.close());
      await late.open();
      late.sendData(open.channel, "typed before joined\n");
      await late.waitFor((x) => x.t === "joined", 5_000, "joined");
      await late.waitForText(open.channel, `output during the join ${bulk}`);
      expect(late.arrivals[0]).toBe("joined");
      await Bun.sleep(100);
      expect(agent.data.some((f) => Buffer.from(payloadOf(f)).toString().includes("typed before joined"))).toBe(false);

      // A viewer whose join the session refuses (it has ended) leaves nothing in the relay.
      const ended = (await openSession(m.id)).body;
      const token = (await viewerToken(ended.id)).token;
      expect((await app.call("POST", `/api/sessions/${ended.id}/end`, { token: app.adminToken })).status).toBe(200);
      await app.server.store.query("update sessions set ended_at = null where id = $1", [ended.id]); // the row lagging the actor
      const refused = new TestViewer(app.url, ended.id, token);
      await refused.open();
      expect((await refused.closed).code).toBe(VIEWER_CLOSE.SESSION_ENDED);
      await eventually(() => !(app.server.relay as any).sessions.has(ended.id), 2_000, "no route left for the ended session");
    });

    test("frames over 64 KiB from a viewer are refused", async () => {
      const m = await machine();
      const s = (await openSession(m.id)).body;
      const v = await viewer(s.id);
      v.sendRaw(new Uint8Array(64 * 1024 + 1));
      expect((await v.closed).code).toBe(1009);
    });

    test("a channel that ends before it opens names its request (req) to the viewers; one that opened does not", async () => {
      const { agent, s, v, open } = await withTerminal();
      const other = await viewer(s.id);
      v.send({ t: "term.open", req: "t-fails", cols: 80, rows: 24 });
      const failing = await agent.waitFor((x) => x.t === "ch.open", "the second ch.open");
      agent.send({ t: "ch.closed", channel: failing.channel, reason: "error", error: { code: "PTY", message: "no pty" } });
      for (const who of [v, other]) {
        expect(await who.waitFor((x) => x.t === "ch.closed" && x.channel === failing.channel)).toMatchObject({ req: "t-fails", reason: "error", error: { code: "PTY" } });
      }
      agent.send({ t: "ch.closed", channel: open.channel, reason: "exit", exit_code: 0 });
      const ended = await v.waitFor((x) => x.t === "ch.closed" && x.channel === open.channel);
      expect(ended).toMatchObject({ reason: "exit", exit_code: 0 });
      expect("req" in ended).toBe(false);
    });

    test("a join the session does not answer (a timeout) closes the viewer with 1011, to retry; not 4100, which is final", async () => {
      const { s } = await withAgentSession();
      const system = app.server.system as any;
      const ask = system.ask;
      system.ask = async (address: string, event: any, ...rest: unknown[]) => {
        if (event?.type === "viewer.joined") {
          system.ask = ask;
          throw new Error("ask timed out");
        }
        return ask.call(system, address, event, ...rest);
      };
      const v = new TestViewer(app.url, s.id, (await viewerToken(s.id)).token);
      cleanups.push(() => v.close());
      await v.open();
      expect((await v.closed).code).toBe(1011);
      // The session is still there: the next try joins.
      await viewer(s.id);
    });

    test("a stalled viewer is cut off with a reason; the agent and the other viewer are not held back", async () => {
      const { m, agent, s } = await withAgentSession();
      const healthy = await viewer(s.id);
      // The stalled viewer: a raw socket that completes the upgrade, then stops reading.
      const { token } = await viewerToken(s.id, "view");
      const net = await import("node:net");
      const port = Number(new URL(app.url).port);
      const stalled = net.connect(port, "127.0.0.1");
      await new Promise<void>((r) => stalled.once("connect", () => r()));
      stalled.write(`GET /ws/viewer?session=${s.id}&token=${token} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ${Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("base64")}\r\n\r\n`);
      await new Promise<void>((r) => stalled.once("data", () => r()));
      stalled.pause();
      cleanups.push(() => stalled.destroy());
      await healthy.waitFor((x) => x.t === "viewers" && x.viewers.length === 2);

      // This terminal is not recorded: 32 MiB recorded would pace the agent at the database's
      // speed (the recorder's backpressure, test/recordings/backpressure.test.ts), and what is
      // tested here is the relay cutting off a viewer.
      app.server.relay.setRecording(false);
      healthy.send({ t: "term.open", req: "t", cols: 80, rows: 24 });
      const open = await agent.waitFor((x) => x.t === "ch.open", "ch.open");
      app.server.relay.setRecording(true);
      const chunk = new Uint8Array(32 * 1024).fill(0x61);
      // Paced (about 100 MB/s) so that the healthy viewer, in this same process, keeps up.
      const total = 32 * 1024 * 1024;
      for (let sent = 0; sent < total; sent += chunk.length) {
        agent.sendData(open.channel, chunk);
        if (sent % (1024 * 1024) === 0) await Bun.sleep(10);
      }
      agent.sendData(open.channel, "END-OF-STREAM");
      await healthy.waitForText(open.channel, "END-OF-STREAM", 30_000);
      expect(healthy.text(open.channel).length).toBe(total + "END-OF-STREAM".length);
      await eventually(async () => app.server.relay.stats.slowViewersDropped >= 1, 5_000, "stalled viewer dropped");
      const after = await healthy.waitFor((x) => x.t === "viewers" && x.viewers.length === 1);
      expect(after.viewers[0].access).toBe("control");
    }, 60_000);

    test("ending a session closes its viewers with the reason and tells the agent", async () => {
      const { agent, s } = await withAgentSession();
      const v = await viewer(s.id);
      const ended = await app.call("POST", `/api/sessions/${s.id}/end`, { token: app.adminToken });
      expect(ended.status).toBe(200);
      expect(ended.body).toMatchObject({ state: "ended", end_reason: "technician" });
      expect((await v.closed).code).toBe(VIEWER_CLOSE.SESSION_ENDED);
      expect(await agent.waitFor((x) => x.t === "session.stop", "session.stop")).toMatchObject({ session: s.id, reason: "technician" });
      expect((await app.call("POST", `/api/sessions/${s.id}/end`, { token: app.adminToken })).status).toBe(409);
      expect((await app.call("POST", `/api/sessions/${s.id}/viewer-token`, { token: app.adminToken, body: { access: "view" } })).status).toBe(409);
    });

    test("an agent that drops and returns within the grace period resumes the session; after it, the session ends", async () => {
      const m = await machine();
      const first = await ScriptedAgent.connect(app, m);
      const s = (await openSession(m.id)).body;
      await first.waitFor((x) => x.t === "session.start", "session.start");
      const v = await viewer(s.id);
      first.socket.close();
      await v.waitFor((x) => x.t === "session.state" && x.state === "agent_lost");
      const second = await ScriptedAgent.connect(app, m);
      cleanups.push(() => second.socket.close());
      expect(await second.waitFor((x) => x.t === "session.start", "resumed start")).toMatchObject({ session: s.id, resume: true });
      await v.waitFor((x) => x.t === "session.state" && x.state === "active" && v.messages.indexOf(x) > 0);
      second.socket.close();
      await eventually(async () => (await getSession(s.id)).state === "ended", 8_000, "ended after the grace period");
      expect(await getSession(s.id)).toMatchObject({ end_reason: "agent_lost" });
    }, 20_000);

    test("an agent that resumes without a channel it had (it restarted): the channel is closed, not left open forever", async () => {
      const { m, agent: first, s, v, open } = await withTerminal();
      v.send({ t: "term.open", req: "t2", cols: 80, rows: 24 });
      const kept = await first.waitFor((x) => x.t === "ch.open", "the second terminal");
      first.send({ t: "ch.opened", channel: kept.channel });
      await v.waitFor((x) => x.t === "ch.opened" && x.channel === kept.channel);
      first.socket.close();
      await v.waitFor((x) => x.t === "session.state" && x.state === "agent_lost");
      const second = await ScriptedAgent.connect(app, m);
      cleanups.push(() => second.socket.close());
      expect(await second.waitFor((x) => x.t === "session.start", "resumed start")).toMatchObject({ session: s.id, resume: true });
      // It still holds the second terminal, not the first.
      second.send({ t: "session.resumed", session: s.id, channels: [kept.channel] });
      expect(await v.waitFor((x) => x.t === "ch.closed" && x.channel === open.channel)).toMatchObject({ reason: "agent_lost" });
      await eventually(async () => {
        const events = (await app.call("GET", `/api/sessions/${s.id}/events`, { token: app.adminToken })).body.events;
        return events.some((e: any) => e.type === "channel.closed" && e.details.channel === open.channel);
      }, 3_000, "the first terminal recorded closed");
      const late = await viewer(s.id);
      expect(late.messages.find((x) => x.t === "joined").channels.map((c: any) => c.channel)).toEqual([kept.channel]);
      // The kept one still works.
      second.sendData(kept.channel, "still here\r\n");
      await v.waitForText(kept.channel, "still here");
    });

    test("an agent whose socket closes while its session takes it: the session is told (agent lost), not left active on a dead connection", async () => {
      const m = await machine();
      const agent = await ScriptedAgent.connect(app, m);
      // The session's actor gets the agent (POST /api/sessions saw it connected) only once its
      // socket has closed: nothing in the relay knew the session then.
      const system = app.server.system as any;
      const ask = system.ask;
      let conn = "";
      system.ask = async (address: string, event: any, ...rest: unknown[]) => {
        if (event?.type === "agent.attached" && address.startsWith("session/")) {
          system.ask = ask;
          conn = event.conn;
          agent.socket.close();
          await eventually(() => !app.server.relay.hasAgent(conn), 3_000, "the relay saw the close");
        }
        return ask.call(system, address, event, ...rest);
      };
      let s: any;
      try {
        s = (await openSession(m.id)).body;
      } finally {
        system.ask = ask;
      }
      expect(conn).not.toBe("");
      expect((await app.server.system.inspect(`session/${s.id}`)).value).not.toBe("active");
      await eventually(async () => (await getSession(s.id)).state === "ended", 8_000, "ended after the grace period");
      expect(await getSession(s.id)).toMatchObject({ end_reason: "agent_lost" });
    }, 20_000);

    test("an agent that leaves while its live sessions are looked up: the waiting session keeps waiting for the next one", async () => {
      const m = await machine();
      const s = (await openSession(m.id)).body;
      expect(s.state).toBe("waiting_for_agent");
      const store = app.server.store as any;
      const query = store.query;
      let release = () => {};
      const held = new Promise<void>((r) => (release = r));
      let reached = () => {};
      const lookingUp = new Promise<void>((r) => (reached = r));
      store.query = async (sql: string, params?: unknown[]) => {
        if (sql.includes("from sessions where ended_at is null and machine_id in")) {
          store.query = query;
          reached();
          await held;
        }
        return query.call(store, sql, params);
      };
      try {
        const agent = await ScriptedAgent.connect(app, m);
        await lookingUp;
        agent.socket.close();
        await eventually(async () => (await app.call("GET", `/api/machines/${m.id}`, { token: app.adminToken })).body.status === "offline", 3_000, "offline");
      } finally {
        store.query = query;
        release();
      }
      await Bun.sleep(200);
      expect((await app.server.system.inspect(`session/${s.id}`)).value).toBe("waiting_for_agent");
      // The next connection takes it.
      const next = await ScriptedAgent.connect(app, m);
      cleanups.push(() => next.socket.close());
      expect(await next.waitFor((x) => x.t === "session.start", "session.start")).toMatchObject({ session: s.id, resume: false });
      expect((await app.call("POST", `/api/sessions/${s.id}/end`, { token: app.adminToken })).status).toBe(200);
    }, 20_000);

    test("consent required by the site: a denial ends the session and no channel ever opens", async () => {
      const consentSite = await siteWithKey(app);
      await app.server.store.query("update sites set require_consent = true where id = $1", [consentSite.id]);
      const id = await agentIdentity();
      const r = await enroll(app, await enrollBody(consentSite, { public_key: id.publicKey }));
      const agent = await ScriptedAgent.connect(app, { id: r.body.machine_id, key: r.body.key, privateKey: id.keys.privateKey });
      cleanups.push(() => agent.socket.close());
      const s = (await openSession(r.body.machine_id)).body;
      expect((await agent.waitFor((x) => x.t === "session.start", "start")).consent).toBe("required");
      await eventually(async () => (await getSession(s.id)).state === "awaiting_consent", 3_000, "awaiting consent");
      const v = await viewer(s.id);
      v.send({ t: "term.open", req: "early", cols: 80, rows: 24 });
      expect(await v.waitFor((x) => x.t === "error" && x.req === "early")).toMatchObject({ code: "CHANNEL_REFUSED" });
      agent.send({ t: "consent", session: s.id, granted: false });
      expect((await v.closed).code).toBe(VIEWER_CLOSE.SESSION_ENDED);
      await eventually(async () => (await getSession(s.id)).state === "ended", 3_000, "ended");
      expect(await getSession(s.id)).toMatchObject({ state: "ended", end_reason: "consent_denied", consent: "denied" });
      expect(agent.messages.filter((x) => x.t === "ch.open")).toEqual([]);
      await eventually(async () => (await app.call("GET", `/api/audit?type=session.consent.denied`, { token: app.adminToken })).body.events.some((e: any) => e.target_id === s.id), 3_000, "audited");
    });

    test("an end user opens sessions only on their granted machine and sees only their own", async () => {
      const granted = await machine();
      const other = await machine();
      const u = await app.user("end_user");
      expect((await app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: granted.id } })).status).toBe(201);
      expect((await openSession(other.id, u.token)).status).toBe(404);
      const mine = await openSession(granted.id, u.token);
      expect(mine.status).toBe(201);
      expect(mine.body.kind).toBe("end_user");
      const listed = (await app.call("GET", "/api/sessions", { token: u.token })).body.sessions;
      expect(listed.map((x: any) => x.id)).toEqual([mine.body.id]);
      // Ended from the viewer by the end user: recorded as theirs, not a technician's.
      const v = new TestViewer(app.url, mine.body.id, (await viewerToken(mine.body.id, "control", u.token)).token);
      cleanups.push(() => v.close());
      await v.open();
      await v.waitFor((x) => x.t === "joined", 5_000, "joined");
      // Their chat is labelled as theirs for everyone, a technician watching too, and in the history.
      const tech = new TestViewer(app.url, mine.body.id, (await viewerToken(mine.body.id, "control")).token);
      cleanups.push(() => tech.close());
      await tech.open();
      await tech.waitFor((x) => x.t === "joined", 5_000, "the technician joined");
      v.send({ t: "chat.send", text: "it is my machine" });
      expect(await tech.waitFor((x) => x.t === "chat" && x.text === "it is my machine")).toMatchObject({ role: "end_user", from: u.username });
      tech.send({ t: "chat.send", text: "I am looking" });
      expect(await v.waitFor((x) => x.t === "chat" && x.text === "I am looking")).toMatchObject({ role: "technician" });
      const late = new TestViewer(app.url, mine.body.id, (await viewerToken(mine.body.id, "view")).token);
      cleanups.push(() => late.close());
      await late.open();
      await eventually(() => late.messages.filter((x) => x.t === "chat").length === 2, 3_000, "the chat history");
      expect(late.messages.filter((x) => x.t === "chat").map((x) => [x.role, x.text])).toEqual([["end_user", "it is my machine"], ["technician", "I am looking"]]);
      v.send({ t: "session.end" });
      await eventually(async () => (await getSession(mine.body.id)).end_reason === "end_user", 3_000, "ended by the end user");
    });

    test("losing access ends the session as a removal: a grant taken back, an end user disabled, a machine removed", async () => {
      const m = await machine();
      const agent = await ScriptedAgent.connect(app, m);
      cleanups.push(() => agent.socket.close());
      const u = await app.user("end_user");
      const grant = () => app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: m.id } });
      const ended = (id: string) => eventually(async () => (await getSession(id)).end_reason === "removal", 5_000, "the session ended as a removal");
      const openAsUser = async () => {
        const s = (await openSession(m.id, u.token)).body;
        await agent.waitFor((x) => x.t === "session.start" && x.session === s.id, "session.start");
        const v = new TestViewer(app.url, s.id, (await viewerToken(s.id, "control", u.token)).token);
        cleanups.push(() => v.close());
        await v.open();
        await v.waitFor((x) => x.t === "joined", 5_000, "joined");
        return { s, v };
      };

      expect((await grant()).status).toBe(201);
      const first = await openAsUser();
      expect((await app.call("DELETE", `/api/users/${u.id}/grants/${m.id}`, { token: app.adminToken })).status).toBe(204);
      await ended(first.s.id);
      await first.v.closed;
      expect((await viewerToken(first.s.id, "control", u.token))).toMatchObject({ error_code: "SESSION_ENDED" });

      // A grant gone by any other way still stops new viewer tokens for the user's live session.
      expect((await grant()).status).toBe(201);
      const second = await openAsUser();
      await app.server.store.query("delete from user_machine_grants where user_id = $1", [u.id]);
      expect(await viewerToken(second.s.id, "control", u.token)).toMatchObject({ error_code: "MACHINE_NOT_GRANTED", status_code: 403 });
      expect((await app.call("POST", `/api/sessions/${second.s.id}/end`, { token: app.adminToken })).status).toBe(200);

      expect((await grant()).status).toBe(201);
      const third = await openAsUser();
      const technicians = (await openSession(m.id)).body; // not the end user's: it goes on
      expect((await app.call("PATCH", `/api/users/${u.id}`, { token: app.adminToken, body: { disabled: true } })).status).toBe(200);
      await ended(third.s.id);
      expect((await getSession(technicians.id)).ended_at).toBeNull();

      expect((await app.call("DELETE", `/api/machines/${m.id}`, { token: app.adminToken })).status).toBe(204);
      await ended(technicians.id);
    });

    test("access lost while the session is being created: the request is refused and the session ended", async () => {
      const m = await machine();
      const u = await app.user("end_user");
      expect((await app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: m.id } })).status).toBe(201);
      // The grant goes after the request's check, before the session's actor exists.
      const system = app.server.system as any;
      const ask = system.ask;
      system.ask = async (address: string, event: any, ...rest: unknown[]) => {
        if (event?.type === "session.create") {
          system.ask = ask;
          await app.server.store.query("delete from user_machine_grants where user_id = $1", [u.id]);
        }
        return ask.call(system, address, event, ...rest);
      };
      const r = await openSession(m.id, u.token);
      expect(r.body).toMatchObject({ status_code: 404, error_code: "MACHINE_NOT_FOUND" });
      const [row] = await app.server.store.query<{ end_reason: string | null }>("select end_reason from sessions where created_by = $1", [u.id]);
      expect(row).toEqual({ end_reason: "removal" });
    });

    test("the list pages with before (a created_at); a before that is not an ISO time is a 400, not a server error", async () => {
      const m = await machine();
      const older = (await openSession(m.id)).body;
      const newer = (await openSession(m.id)).body;
      const page = async (before: string) => app.call("GET", `/api/sessions?machine_id=${m.id}&before=${encodeURIComponent(before)}`, { token: app.adminToken });
      expect((await page(newer.created_at)).body.sessions.map((x: any) => x.id)).toEqual([older.id]);
      // Any offset ISO 8601 allows, though PostgreSQL itself does not read +23:59.
      expect((await page(newer.created_at.replace("Z", "+23:59"))).status).toBe(200);
      // These reached the database as they were, and failed there (500).
      for (const before of ["RS4J9XTZHJNV78XH3WNFSX9KQR", "515154", "1e309", "0000-01-01T00:00:00Z"]) {
        const r = await page(before);
        expect({ before, status: r.status, code: r.body.error_code, detail: r.body.detail }).toMatchObject({ before, status: 400, code: "VALIDATION_FAILED", detail: expect.stringMatching(/^query\.before/) });
      }
    });

    test("a restart drops the old process's viewers: recorded as left, not counted against the limit", async () => {
      const system = app.server.system;
      const ghost = (id: string) => ({ type: "viewer.joined", viewer_id: id, user_id: null, name: "tech", access: "control" });
      const viewersOf = async (id: string) => Object.keys(((await system.inspect(`session/${id}`)).context as { viewers: object }).viewers);
      // Active, with a viewer, when the process died; and one still waiting for its agent.
      const active = (await openSession((await machine()).id)).body;
      await system.ask(`session/${active.id}`, { type: "agent.attached", conn: "old-process-conn" });
      await system.ask(`session/${active.id}`, ghost("ghost-1"));
      const waiting = (await openSession((await machine()).id)).body;
      await system.ask(`session/${waiting.id}`, ghost("ghost-2"));
      for (const s of [active, waiting]) await system.ask(`session/${s.id}`, { type: "server.restarted" });
      expect([await viewersOf(active.id), await viewersOf(waiting.id)]).toEqual([[], []]);
      for (const s of [active, waiting]) {
        await eventually(async () => (await getSession(s.id)).viewers === 0, 3_000, "the row's viewer count");
        const events = (await app.call("GET", `/api/sessions/${s.id}/events`, { token: app.adminToken })).body.events;
        expect(events.filter((e: any) => e.type === "viewer.left").map((e: any) => e.details)).toEqual([expect.objectContaining({ reason: "server_restarted" })]);
      }
      expect((await getSession(active.id)).state).toBe("agent_lost");
      expect((await getSession(waiting.id)).state).toBe("waiting_for_agent");
    });

    test("a technician's next session on a machine supersedes their sessions of it nobody has watched for a minute; watched, recent and others' are left", async () => {
      const m = await machine();
      const agent = await ScriptedAgent.connect(app, m);
      cleanups.push(() => agent.socket.close());
      const other = await app.user("technician");
      const idle = (await openSession(m.id)).body;
      const watched = (await openSession(m.id)).body;
      await viewer(watched.id);
      await eventually(async () => (await getSession(watched.id)).viewers === 1, 3_000, "the viewer counted");
      const others = (await openSession(m.id, other.token)).body;
      // A minute without a change, for all three; a fourth is recent.
      await app.server.store.query("update sessions set updated_at = now() - interval '2 minutes' where id = any($1::uuid[])", [[idle.id, watched.id, others.id]]);
      const recent = (await openSession(m.id)).body;
      const next = await openSession(m.id);
      expect(next.status).toBe(201);
      expect(await getSession(idle.id)).toMatchObject({ state: "ended", end_reason: "superseded" });
      for (const s of [watched, others, recent, next.body]) expect((await getSession(s.id)).ended_at).toBeNull();
      const events = (await app.call("GET", `/api/sessions/${idle.id}/events`, { token: app.adminToken })).body.events;
      expect(events.find((e: any) => e.type === "session.ended")).toMatchObject({ details: { reason: "superseded" } });
      // The agent is told the superseded one is over before it hears of the new one (it holds
      // a bounded number of sessions).
      const at = (t: string, session: string) => agent.messages.findIndex((x) => x.t === t && x.session === session);
      await eventually(() => at("session.start", next.body.id) >= 0, 3_000, "the new session started on the agent");
      expect(at("session.stop", idle.id)).toBeGreaterThanOrEqual(0);
      expect(at("session.stop", idle.id)).toBeLessThan(at("session.start", next.body.id));
      // A session a viewer joined since it looked idle is not superseded.
      expect((await app.server.system.ask(`session/${watched.id}`, { type: "session.end", by: "superseded" })).reply).toEqual({ ok: false, code: "SESSION_IN_USE" });
    });

    test("an API token with sessions:write creates a session and mints a viewer token (S8)", async () => {
      const m = await machine();
      const pat = (await app.call("POST", "/api/tokens", { token: app.adminToken, body: { name: `s8-${Date.now()}`, scopes: ["sessions:write", "sessions:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() } })).body.token;
      const s = await openSession(m.id, pat);
      expect(s.status).toBe(201);
      const t = await app.call("POST", `/api/sessions/${s.body.id}/viewer-token`, { token: pat, body: { access: "view" } });
      expect(t.status).toBe(201);
      expect(t.body.url).toContain(`/ws/viewer?session=${s.body.id}&token=`);
      expect(await upgradeStatus(app, s.body.id, t.body.token)).toBe(101);
    });

    test("each session has a room: its technicians are members, and chat both ways is stored there and streamed (R1)", async () => {
      const { agent, s } = await withAgentSession();
      const tech = await app.user("technician");
      await eventually(async () => (await app.call("GET", `/api/rooms/${s.id}`, { token: app.adminToken })).status === 200, 3_000, "the session's room");
      // Not a member yet: the room is closed to them.
      expect((await app.call("GET", `/api/rooms/${s.id}/messages`, { token: tech.token })).status).toBe(403);
      const v = new TestViewer(app.url, s.id, (await viewerToken(s.id, "control", tech.token)).token);
      cleanups.push(() => v.close());
      await v.open();
      await v.waitFor((x) => x.t === "joined", 5_000, "joined");
      await eventually(async () => (await app.call("GET", `/api/rooms/${s.id}`, { token: tech.token })).status === 200, 3_000, "member of the room");
      const room = (await app.call("GET", `/api/rooms/${s.id}`, { token: tech.token })).body;
      expect(room).toMatchObject({ id: s.id, kind: "session", policy: { persist: true, sign: false, encrypt: false } });
      expect(room.members.map((x: any) => [x.name, x.role])).toEqual([["admin", "owner"], [tech.username, "member"]]);

      v.send({ t: "chat.send", text: "hello from the technician" });
      expect(await agent.waitFor((x) => x.t === "chat", "chat at the agent")).toEqual({ t: "chat", session: s.id, from: tech.username, text: "hello from the technician" });
      const echoed = await v.waitFor((x) => x.t === "chat" && x.role === "technician");
      expect(echoed).toMatchObject({ from: tech.username, text: "hello from the technician" });
      agent.send({ t: "chat", session: s.id, text: "thanks, I see it" });
      expect(await v.waitFor((x) => x.t === "chat" && x.role === "end_user")).toMatchObject({ text: "thanks, I see it" });

      const stored = (await app.call("GET", `/api/rooms/${s.id}/messages`, { token: app.adminToken })).body.messages;
      expect(stored.map((x: any) => [x.sender, x.body])).toEqual([[tech.id, "hello from the technician"], [`person:${s.id}`, "thanks, I see it"]]);
      expect(echoed.id).toBe(stored[0].id);
      // A REST post to the session's room reaches the viewers and the person at the machine too.
      expect((await app.call("POST", `/api/rooms/${s.id}/messages`, { token: app.adminToken, body: { body: "posted over the API" } })).status).toBe(201);
      expect(await agent.waitFor((x) => x.t === "chat", "API chat at the agent")).toMatchObject({ from: "admin", text: "posted over the API" });
      expect(await v.waitFor((x) => x.t === "chat" && x.text === "posted over the API")).toMatchObject({ role: "technician" });

      // A view-only viewer reads the chat on its socket, but is not made a member: posting is acting.
      const watcher = await app.user("technician");
      const watching = new TestViewer(app.url, s.id, (await viewerToken(s.id, "view", watcher.token)).token);
      cleanups.push(() => watching.close());
      await watching.open();
      await watching.waitFor((x) => x.t === "joined", 5_000, "joined");
      await eventually(() => watching.messages.filter((x) => x.t === "chat").length === 3, 3_000, "the chat on the socket");
      // The join's effects have run (its event is recorded; a membership would have followed at once).
      await eventually(async () => (await app.call("GET", `/api/sessions/${s.id}/events`, { token: app.adminToken })).body.events
        .some((e: any) => e.type === "viewer.joined" && e.actor === watcher.id), 3_000, "the watcher's join recorded");
      await Bun.sleep(300);
      expect((await app.call("POST", `/api/rooms/${s.id}/messages`, { token: watcher.token, body: { body: "from a watcher" } })).status).toBe(403);

      // A viewer who joins (or rejoins after a restart) is sent the chat so far, oldest first.
      const late = new TestViewer(app.url, s.id, (await viewerToken(s.id, "view", tech.token)).token);
      cleanups.push(() => late.close());
      await late.open();
      await late.waitFor((x) => x.t === "joined", 5_000, "joined");
      await eventually(async () => late.messages.filter((x) => x.t === "chat").length === 3, 3_000, "the chat history");
      const history = late.messages.filter((x) => x.t === "chat");
      expect(history.map((x) => [x.role, x.text])).toEqual([["technician", "hello from the technician"], ["end_user", "thanks, I see it"], ["technician", "posted over the API"]]);
      expect(history[0].id).toBe(stored[0].id);

      // Longer than one agent frame carries (a room takes 16 KiB): it reaches the person at the
      // machine in pieces its schema accepts, in order, with no surrogate pair cut in two.
      const long = `${"x".repeat(MAX_CHAT_TEXT - 1)}😀${"y".repeat(6_000)}`;
      expect((await app.call("POST", `/api/rooms/${s.id}/messages`, { token: app.adminToken, body: { body: long } })).status).toBe(201);
      const pieces: string[] = [];
      while (pieces.join("").length < long.length) {
        const piece = await agent.waitFor((x) => x.t === "chat", "a piece of the long message");
        expect(ChatToAgent.safeParse(piece).success).toBe(true);
        pieces.push(piece.text);
      }
      expect(pieces.map((p) => p.length)).toEqual([MAX_CHAT_TEXT - 1, MAX_CHAT_TEXT, long.length - 2 * MAX_CHAT_TEXT + 1]);
      expect(pieces.join("")).toBe(long);
    });

    test("a technician removed from the session's room cannot chat through their viewer; its members and the person at the machine still can (R1)", async () => {
      const { agent, s } = await withAgentSession();
      const [removed, kept] = [await app.user("technician"), await app.user("technician")];
      const join = async (u: { token: string }) => {
        const v = new TestViewer(app.url, s.id, (await viewerToken(s.id, "control", u.token)).token);
        cleanups.push(() => v.close());
        await v.open();
        await v.waitFor((x) => x.t === "joined", 5_000, "joined");
        await eventually(async () => (await app.call("GET", `/api/rooms/${s.id}`, { token: u.token })).status === 200, 3_000, "member of the room");
        return v;
      };
      const [gone, stays] = [await join(removed), await join(kept)];
      // The room's owner (the admin who opened the session) removes one of them over the API.
      expect((await app.call("DELETE", `/api/rooms/${s.id}/members/${removed.id}`, { token: app.adminToken })).status).toBe(204);
      expect((await app.call("GET", `/api/rooms/${s.id}/messages`, { token: removed.token })).status).toBe(403);

      // Their viewer is still connected, but its chat is refused: not re-added, not stored, not sent on.
      gone.send({ t: "chat.send", text: "still here?" });
      expect(await gone.waitFor((x) => x.t === "error", 5_000, "the refusal")).toEqual({ t: "error", req: null, code: "NOT_A_MEMBER", message: expect.any(String) });
      stays.send({ t: "chat.send", text: "from a member" });
      expect(await agent.waitFor((x) => x.t === "chat", "the member's chat at the agent")).toMatchObject({ from: kept.username, text: "from a member" });
      agent.send({ t: "chat", session: s.id, text: "from the person" });
      await stays.waitFor((x) => x.t === "chat" && x.text === "from the person", 5_000, "the person's chat");
      const stored = (await app.call("GET", `/api/rooms/${s.id}/messages`, { token: app.adminToken })).body.messages;
      expect(stored.map((x: any) => [x.sender, x.body])).toEqual([[kept.id, "from a member"], [`person:${s.id}`, "from the person"]]);
      const room = (await app.call("GET", `/api/rooms/${s.id}`, { token: app.adminToken })).body;
      // The refused post did not add them back.
      expect(room.members.map((x: any) => x.member)).toContain(kept.id);
      expect(room.members.map((x: any) => x.member)).not.toContain(removed.id);
      expect(stays.messages.some((x) => x.t === "error")).toBe(false);
    });

    test("a user disabled, given another role or whose password is reset: their viewers close at once (4106), and tokens they minted before are refused", async () => {
      const { s } = await withAgentSession();
      const join = async (token: string) => {
        const v = new TestViewer(app.url, s.id, token);
        cleanups.push(() => v.close());
        await v.open();
        await v.waitFor((x) => x.t === "joined", 5_000, "joined");
        return v;
      };
      const changes: Array<[string, (id: string) => Promise<{ status: number }>]> = [
        ["disabled", (id) => app.call("PATCH", `/api/users/${id}`, { token: app.adminToken, body: { disabled: true } })],
        ["demoted", (id) => app.call("PATCH", `/api/users/${id}`, { token: app.adminToken, body: { role: "auditor" } })],
        ["password reset", (id) => app.call("POST", `/api/users/${id}/password`, { token: app.adminToken, body: { password: "a brand new password here" } })],
      ];
      for (const [what, change] of changes) {
        const tech = await app.user("technician");
        const spare = (await viewerToken(s.id, "control", tech.token)).token; // minted before, used after
        const watching = await join((await viewerToken(s.id, "view", tech.token)).token);
        const bystander = await viewer(s.id);
        expect({ what, status: (await change(tech.id)).status }).toEqual({ what, status: what === "password reset" ? 204 : 200 });
        expect({ what, code: (await watching.closed).code }).toEqual({ what, code: VIEWER_CLOSE.ACCESS_REVOKED });
        expect(await Promise.race([bystander.closed.then(() => "closed"), Bun.sleep(200).then(() => "open")])).toBe("open");
        // A token minted before the change: refused for a disabled or demoted user (a reset password
        // leaves an active technician, whose token stands).
        if (what === "password reset") (await join(spare)).close();
        else expect({ what, status: await upgradeStatus(app, s.id, spare) }).toEqual({ what, status: 401 });
        bystander.close();
      }
      const refused = (await app.call("GET", "/api/audit?type=viewer.refused&limit=50", { token: app.adminToken })).body.events;
      expect(refused.map((e: any) => e.details.reason)).toEqual(expect.arrayContaining(["user_disabled", "role_changed"]));
    });
  });
}
