import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CLOSE, PROTOCOL_VERSION } from "../../src/protocol/agent.ts";
import { SUPPORT_CLOSE } from "../../src/protocol/support.ts";
import { drawCode } from "../../src/sessions/support-codes.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { supportAgent } from "../helpers/support-client.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

test("codes are 6 digits, drawn uniformly", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 2_000; i++) {
    const c = drawCode();
    expect(c).toMatch(/^\d{6}$/);
    seen.add(c);
  }
  expect(seen.size).toBeGreaterThan(1_990);
});

for (const flavor of FLAVORS) {
  describe(`support codes (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    const createCode = async (token = app.adminToken) => app.call("POST", "/api/support-codes", { token, body: {} });

    test("a technician's code starts an attended session; the person's agent joins with it once, and consent decides", async () => {
      const tech = await app.user("technician");
      const r = await createCode(tech.token);
      expect(r.status).toBe(201);
      expect(r.body.code).toMatch(/^\d{6}$/);
      expect(r.body.command).toContain(`--code ${r.body.code}`);
      expect(new Date(r.body.expires_at).getTime() - Date.now()).toBeGreaterThan(19 * 60_000);
      const session = (await app.call("GET", `/api/sessions/${r.body.session_id}`, { token: tech.token })).body;
      expect(session).toMatchObject({ kind: "attended", state: "waiting_for_agent", consent: "required", technician: tech.username });

      const agent = await supportAgent(app, r.body.code);
      expect(await agent.waitFor((m) => m.t === "welcome")).toMatchObject({ session: r.body.session_id, technician: tech.username });
      expect(await agent.waitFor((m) => m.t === "session.start")).toMatchObject({ kind: "attended", consent: "required", technician: tech.username });
      agent.send({ t: "consent", session: r.body.session_id, granted: true });
      await eventually(async () => (await app.call("GET", `/api/sessions/${r.body.session_id}`, { token: tech.token })).body.state === "active", 3_000, "active");
      expect((await app.call("GET", `/api/sessions/${r.body.session_id}`, { token: tech.token })).body.hostname).toBe("laptop-7");

      // Single use: the same code again does not take the session over while its agent is there.
      const again = await supportAgent(app, r.body.code);
      expect((await again.closed).code).toBe(SUPPORT_CLOSE.AGENT_CONNECTED);
      // The person's agent drops and comes back with its code within the grace period: resumed.
      agent.ws.close();
      await eventually(async () => (await app.call("GET", `/api/sessions/${r.body.session_id}`, { token: tech.token })).body.state === "agent_lost", 3_000, "agent lost");
      const back = await supportAgent(app, r.body.code);
      expect(await back.waitFor((m) => m.t === "session.start")).toMatchObject({ session: r.body.session_id, resume: true });
      // Once the session has ended, the code is good for nothing.
      expect((await app.call("POST", `/api/sessions/${r.body.session_id}/end`, { token: tech.token })).status).toBe(200);
      expect(await back.waitFor((m) => m.t === "session.stop")).toMatchObject({ reason: "technician" });
      back.ws.close();
      expect((await (await supportAgent(app, r.body.code)).closed).code).toBe(SUPPORT_CLOSE.BAD_CODE);
    });

    /**
     * Holds the first call of `target` matching `match` (the session's actor asked, a query run)
     * until `release()`; `done` resolves once the held call has completed.
     */
    const hold = (target: any, method: "ask" | "query", match: (...args: any[]) => boolean) => {
      const original = target[method];
      let release = () => {};
      const held = new Promise<void>((r) => (release = r));
      let reach: (args: any[]) => void = () => {};
      const reached = new Promise<any[]>((r) => (reach = r));
      let finish = () => {};
      const done = new Promise<void>((r) => (finish = r));
      target[method] = async (...args: any[]) => {
        if (!match(...args)) return original.apply(target, args);
        target[method] = original;
        const isClaim = method === "query";
        if (!isClaim) {
          reach(args);
          await held;
        }
        try {
          return await original.apply(target, args);
        } finally {
          if (isClaim) {
            reach(args);
            await held;
          }
          finish();
        }
      };
      return { reached, done, release: () => release(), restore: () => ((target[method] = original), release()) };
    };
    const stateOf = async (session: string, on = app) => (await on.server.system.inspect(`session/${session}`)).value;
    const attachedTo = (session: string) => (address: string, event: any) => address === `session/${session}` && event?.type === "agent.attached";
    /**
     * Holds the session row's projection of `state` (and so every later write of that session's
     * projections) until released: the row lagging its actor, as it may at any moment.
     */
    const holdRow = (session: string, state: string, on = app) => {
      const store = on.server.store as any;
      const original = store.query;
      let release = () => {};
      const held = new Promise<void>((r) => (release = r));
      let reach = () => {};
      const reached = new Promise<void>((r) => (reach = r));
      store.query = async (sql: string, params?: unknown[]) => {
        if (sql.includes("update sessions set state") && params?.[0] === session && params?.[1] === state) {
          reach();
          await held;
        }
        return original.call(store, sql, params);
      };
      return { reached, release: () => ((store.query = original), release()) };
    };
    const rowState = async (session: string) =>
      (await app.server.store.query<{ state: string }>("select state from sessions where id = $1", [session]))[0]!.state;
    const consented = async (on: TestApp, r: { code: string; session_id: string }) => {
      const agent = await supportAgent(on, r.code);
      await agent.waitFor((m) => m.t === "session.start");
      agent.send({ t: "consent", session: r.session_id, granted: true });
      await eventually(async () => (await stateOf(r.session_id, on)) === "active", 3_000, "active");
      return agent;
    };

    test("the code while its session's agent is still connected: 4203, neither a failure nor a success for the lockout; once that connection closes, it resumes the session", async () => {
      // A server of its own: the lockout is counted per address.
      const fresh = await startTestApp(flavor);
      const sockets: WebSocket[] = [];
      try {
        const r = (await fresh.call("POST", "/api/support-codes", { token: fresh.adminToken, body: {} })).body;
        const agent = await consented(fresh, r);
        sockets.push(agent.ws);
        const conn = ((await fresh.server.system.inspect(`session/${r.session_id}`)).context as any).agentConn;
        // As when the person's agent comes back over a new path while the server still holds
        // the old connection (a silently dead one is only found by the heartbeat sweep).
        const again = await supportAgent(fresh, r.code);
        expect((await again.closed).code).toBe(SUPPORT_CLOSE.AGENT_CONNECTED);
        const after = await fresh.server.system.inspect(`session/${r.session_id}`);
        expect([after.value, (after.context as any).agentConn]).toEqual(["active", conn]);
        expect(agent.messages.some((m) => m.t === "session.stop")).toBe(false);

        // The old connection closes: the code brings the agent back to the same session.
        agent.ws.close();
        await eventually(async () => (await stateOf(r.session_id, fresh)) === "agent_lost", 3_000, "agent lost");
        const back = await supportAgent(fresh, r.code);
        sockets.push(back.ws);
        expect(await back.waitFor((m) => m.t === "welcome")).toMatchObject({ session: r.session_id });
        expect(await back.waitFor((m) => m.t === "session.start")).toMatchObject({ session: r.session_id, resume: true });

        // Nine wrong codes, 4203 again, then the tenth wrong one is what locks the address out:
        // 4203 neither counted as a failure nor cleared the nine.
        for (let i = 0; i < 9; i++) {
          const wrong = String((Number(r.code) + 1 + i) % 1_000_000).padStart(6, "0");
          expect((await (await supportAgent(fresh, wrong)).closed).code).toBe(SUPPORT_CLOSE.BAD_CODE);
        }
        expect((await (await supportAgent(fresh, r.code)).closed).code).toBe(SUPPORT_CLOSE.AGENT_CONNECTED);
        const tenth = String((Number(r.code) + 10) % 1_000_000).padStart(6, "0");
        expect((await (await supportAgent(fresh, tenth)).closed).code).toBe(SUPPORT_CLOSE.BAD_CODE);
        expect((await (await supportAgent(fresh, r.code)).closed).code).toBe(SUPPORT_CLOSE.LOCKED_OUT);
      } finally {
        for (const ws of sockets) ws.close();
        await fresh.close();
      }
    }, 60_000);

    test("the code again while the person is asked for consent: 4203, and the question stays with the first connection", async () => {
      const r = (await createCode()).body;
      const agent = await supportAgent(app, r.code);
      await agent.waitFor((m) => m.t === "session.start");
      const again = await supportAgent(app, r.code);
      expect((await again.closed).code).toBe(SUPPORT_CLOSE.AGENT_CONNECTED);
      expect(await stateOf(r.session_id)).toBe("awaiting_consent");
      agent.send({ t: "consent", session: r.session_id, granted: true });
      await eventually(async () => (await stateOf(r.session_id)) === "active", 3_000, "active");
      expect((await app.call("POST", `/api/sessions/${r.session_id}/end`, { token: app.adminToken })).status).toBe(200);
      agent.ws.close();
    });

    test("the person's connection drops while they are asked for consent: the session waits for it, and asks again when it is back", async () => {
      const r = (await createCode()).body;
      const first = await supportAgent(app, r.code);
      await first.waitFor((m) => m.t === "session.start");
      first.ws.close();
      await eventually(async () => (await stateOf(r.session_id)) === "waiting_for_agent", 3_000, "waiting for the person's agent");
      const back = await supportAgent(app, r.code);
      expect(await back.waitFor((m) => m.t === "session.start")).toMatchObject({ session: r.session_id, consent: "required" });
      expect(await stateOf(r.session_id)).toBe("awaiting_consent");
      back.send({ t: "consent", session: r.session_id, granted: true });
      await eventually(async () => (await stateOf(r.session_id)) === "active", 3_000, "active");
      const events = (await app.call("GET", `/api/sessions/${r.session_id}/events`, { token: app.adminToken })).body.events.map((e: any) => e.type);
      expect(events.filter((t: string) => t === "consent.asked").length).toBe(2);
      expect(events).toContain("agent.lost");
      expect((await app.call("POST", `/api/sessions/${r.session_id}/end`, { token: app.adminToken })).status).toBe(200);
      back.ws.close();

      // Not back within the grace period: ended as agent_lost.
      const late = (await createCode()).body;
      const gone = await supportAgent(app, late.code);
      await gone.waitFor((m) => m.t === "session.start");
      gone.ws.close();
      await eventually(async () => (await stateOf(late.session_id)) === "waiting_for_agent", 3_000, "waiting");
      await app.server.system.send(`session/${late.session_id}`, { type: "grace.expired", at: Date.now() } as never);
      await eventually(async () => (await stateOf(late.session_id)) === "ended", 3_000, "ended");
      await eventually(async () => (await app.call("GET", `/api/sessions/${late.session_id}`, { token: app.adminToken })).body.end_reason === "agent_lost", 3_000, "ended as agent_lost");
    });

    test("a link that keeps dropping while consent is asked: waited for three times, then the session ends (agent_lost)", async () => {
      const r = (await createCode()).body;
      for (let i = 0; i < 4; i++) {
        const agent = await supportAgent(app, r.code);
        await agent.waitFor((m) => m.t === "session.start");
        agent.ws.close();
        if (i < 3) await eventually(async () => (await stateOf(r.session_id)) === "waiting_for_agent", 3_000, `waiting after drop ${i + 1}`);
      }
      await eventually(async () => (await stateOf(r.session_id)) === "ended", 3_000, "ended after the fourth drop");
      await eventually(async () => (await app.call("GET", `/api/sessions/${r.session_id}`, { token: app.adminToken })).body.end_reason === "agent_lost", 3_000, "agent_lost");
    });

    test("a reconnect right after the old connection closed resumes the session, however far behind its row is; an ended session's code is refused either way", async () => {
      const r = (await createCode()).body;
      const agent = await consented(app, r);
      await eventually(async () => (await rowState(r.session_id)) === "active", 3_000, "row active");
      const lost = holdRow(r.session_id, "agent_lost");
      try {
        agent.ws.close();
        await eventually(async () => (await stateOf(r.session_id)) === "agent_lost", 3_000, "agent lost");
        await lost.reached;
        expect(await rowState(r.session_id)).toBe("active");
        const back = await supportAgent(app, r.code);
        expect(await back.waitFor((m) => m.t === "session.start")).toMatchObject({ session: r.session_id, resume: true });
        expect(await stateOf(r.session_id)).toBe("active");
        lost.release();

        // Ended, the row not yet saying so: the session refuses the code itself.
        const ended = holdRow(r.session_id, "ended");
        expect((await app.server.system.ask(`session/${r.session_id}`, { type: "session.end", by: "technician" })).reply).toEqual({ ok: true });
        expect(await back.waitFor((m) => m.t === "session.stop")).toMatchObject({ reason: "technician" });
        back.ws.close();
        await ended.reached;
        expect((await (await supportAgent(app, r.code)).closed).code).toBe(SUPPORT_CLOSE.SESSION_ENDED);
        ended.release();
        await eventually(async () => (await rowState(r.session_id)) === "ended", 3_000, "row ended");
        expect((await (await supportAgent(app, r.code)).closed).code).toBe(SUPPORT_CLOSE.BAD_CODE);
      } finally {
        lost.release();
      }
    });

    test("a socket that closes while its session takes it leaves no agent behind: the session is told", async () => {
      const r = (await createCode()).body;
      const h = hold(app.server.system, "ask", attachedTo(r.session_id));
      try {
        const agent = await supportAgent(app, r.code);
        const [, event] = await h.reached;
        agent.ws.close();
        await agent.closed;
        await Bun.sleep(100);
        h.release();
        await h.done;
        await Bun.sleep(100);
        expect(app.server.relay.hasAgent(event.conn)).toBe(false);
        // Gone while asked for consent: the session waits its grace period for the person's agent
        // again, as when it drops then.
        expect(await stateOf(r.session_id)).toBe("waiting_for_agent");
        expect(agent.messages.some((m) => m.t === "welcome")).toBe(false);
      } finally {
        h.restore();
      }
    });

    test("a socket that closes right after its code is claimed: the session keeps waiting and the code is good again", async () => {
      const r = (await createCode()).body;
      const h = hold(app.server.store, "query", (sql: string) => sql.includes("update support_codes set status = 'used'"));
      try {
        const agent = await supportAgent(app, r.code);
        await h.reached;
        agent.ws.close();
        await agent.closed;
        await Bun.sleep(100);
        h.release();
        await h.done;
        await Bun.sleep(200);
        expect(await stateOf(r.session_id)).toBe("waiting_for_agent");
      } finally {
        h.restore();
      }
      const real = await supportAgent(app, r.code);
      expect(await real.waitFor((m) => m.t === "welcome")).toMatchObject({ session: r.session_id });
      expect(await real.waitFor((m) => m.t === "session.start")).toMatchObject({ session: r.session_id, resume: false });
      real.ws.close();
    });

    test("a reconnecting agent whose socket closes during its hello: the session is back in its grace period, not active on nothing, and the code good again at once", async () => {
      const r = (await createCode()).body;
      const agent = await consented(app, r);
      await eventually(async () => (await rowState(r.session_id)) === "active", 3_000, "row active");
      // The row is written after the actor's transitions: here it says active throughout.
      const row = holdRow(r.session_id, "agent_lost");
      try {
        agent.ws.close();
        await eventually(async () => (await stateOf(r.session_id)) === "agent_lost", 3_000, "agent lost");
        const h = hold(app.server.system, "ask", attachedTo(r.session_id));
        try {
          const back = await supportAgent(app, r.code);
          const reached = await Promise.race([h.reached, back.closed.then((c) => Promise.reject(new Error(`closed before the session took it: ${c.code}`)))]);
          const [, event] = reached as Awaited<typeof h.reached>;
          back.ws.close();
          await back.closed;
          await Bun.sleep(100);
          h.release();
          await h.done;
          await Bun.sleep(100);
          expect(app.server.relay.hasAgent(event.conn)).toBe(false);
          expect(await stateOf(r.session_id)).toBe("agent_lost");
        } finally {
          h.restore();
        }
        // Still reclaimable by the person's agent, whatever the row says.
        expect(await rowState(r.session_id)).toBe("active");
        const again = await supportAgent(app, r.code);
        expect(await again.waitFor((m) => m.t === "session.start")).toMatchObject({ session: r.session_id, resume: true });
        row.release();
        expect((await app.call("POST", `/api/sessions/${r.session_id}/end`, { token: app.adminToken })).status).toBe(200);
        again.ws.close();
      } finally {
        row.release();
      }
    });

    test("anything after the hello and before the welcome, a second hello included, is out of order (4000)", async () => {
      const r = (await createCode()).body;
      const agent = await supportAgent(app, r.code);
      agent.send({ t: "hello", code: r.code, agent_version: "test", protocol: PROTOCOL_VERSION, hostname: "laptop-7", user: "alice" });
      expect((await agent.closed).code).toBe(CLOSE.BAD_MESSAGE);
      expect(agent.messages.some((m) => m.t === "welcome")).toBe(false);
    });

    test("a cancelled code ends its session and is refused", async () => {
      const r = await createCode();
      const cancel = await app.call("POST", `/api/support-codes/${r.body.code}/cancel`, { token: app.adminToken });
      expect(cancel.status).toBe(200);
      expect((await app.call("GET", `/api/sessions/${r.body.session_id}`, { token: app.adminToken })).body).toMatchObject({ state: "ended", end_reason: "technician" });
      expect((await app.call("POST", `/api/support-codes/${r.body.code}/cancel`, { token: app.adminToken })).status).toBe(404);
      const agent = await supportAgent(app, r.body.code);
      expect((await agent.closed).code).toBe(SUPPORT_CLOSE.BAD_CODE);
    });

    test("ten wrong codes from one address lock it out for fifteen minutes, even for a right code", async () => {
      // A server of its own: the other tests' wrong codes count against this address too.
      const fresh = await startTestApp(flavor);
      try {
        await lockout(fresh);
      } finally {
        await fresh.close();
      }
    }, 60_000);

    test("wrong codes sent in parallel from one address are counted one by one: the eleventh is locked out", async () => {
      const fresh = await startTestApp(flavor);
      try {
        const good = (await fresh.call("POST", "/api/support-codes", { token: fresh.adminToken, body: {} })).body.code as string;
        const wrong = Array.from({ length: 25 }, (_, i) => String((Number(good) + 1 + i) % 1_000_000).padStart(6, "0"));
        const agents = await Promise.all(wrong.map((code) => supportAgent(fresh, code)));
        const codes = await Promise.all(agents.map(async (a) => (await a.closed).code));
        // Without one check at a time per address, all 25 passed the check before a failure counted.
        expect(codes.filter((c) => c === SUPPORT_CLOSE.BAD_CODE)).toHaveLength(10);
        expect(codes.filter((c) => c === SUPPORT_CLOSE.LOCKED_OUT)).toHaveLength(15);
      } finally {
        await fresh.close();
      }
    }, 60_000);

    async function lockout(app: TestApp) {
      const good = (await app.call("POST", "/api/support-codes", { token: app.adminToken, body: {} })).body.code as string;
      for (let i = 0; i < 10; i++) {
        const wrong = String((Number(good) + 1 + i) % 1_000_000).padStart(6, "0");
        expect((await (await supportAgent(app, wrong)).closed).code).toBe(SUPPORT_CLOSE.BAD_CODE);
      }
      const locked = await supportAgent(app, good);
      expect((await locked.closed).code).toBe(SUPPORT_CLOSE.LOCKED_OUT);
      const events = (await app.call("GET", "/api/audit?type=support_code.refused&limit=50", { token: app.adminToken })).body.events;
      expect(events.some((e: any) => e.details.locked_out === true)).toBe(true);
      expect(JSON.stringify(events)).not.toContain(good);
    }
  });
}
