import { afterAll, beforeAll, describe, expect, test } from "bun:test";
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

      // Single use: the same code again is refused like any wrong code while the agent is there.
      const again = await supportAgent(app, r.body.code);
      expect((await again.closed).code).toBe(SUPPORT_CLOSE.BAD_CODE);
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
