import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CLOSE } from "../../src/protocol/agent.ts";
import { TestAgentSocket } from "../helpers/agent-client.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import { enrolledAgent, siteWithKey, type SiteWithKey } from "../machines/fixtures.ts";

/** Issue 4, requirement 2: disabling a machine disconnects its live agent within a second and keeps it out until enabled. */
for (const flavor of FLAVORS) {
  describe(`disabling a machine (${flavor})`, () => {
    let app: TestApp;
    let site: SiteWithKey;
    const sockets: TestAgentSocket[] = [];
    const socket = () => {
      const s = new TestAgentSocket(app.url);
      sockets.push(s);
      return s;
    };
    const machine = () => enrolledAgent(app, site);
    const get = async (id: string) => (await app.call("GET", `/api/machines/${id}`, { token: app.adminToken })).body;
    const post = (path: string, token = app.adminToken, body?: unknown) => app.call("POST", path, { token, body });

    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_HEARTBEAT_MS: "200", TETHER_OFFLINE_AFTER_MS: "800" } });
      site = await siteWithKey(app);
    }, 60_000);
    afterAll(async () => {
      for (const s of sockets) s.close();
      await app?.close();
    });

    test("a live agent is closed within a second (4011), refused while disabled, and back once enabled", async () => {
      const m = await machine();
      const live = socket();
      expect(await live.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online");

      const disabledAt = Date.now();
      const r = await post(`/api/machines/${m.id}/disable`);
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ id: m.id, disabled_at: expect.any(String) });
      expect((await live.closed).code).toBe(CLOSE.MACHINE_DISABLED);
      expect(Date.now() - disabledAt).toBeLessThan(1_000);
      await eventually(async () => (await get(m.id)).status === "offline", 3_000, "offline");

      const refused = socket();
      await refused.handshake(m.id, m.key, m.privateKey);
      expect((await refused.closed).code).toBe(CLOSE.MACHINE_DISABLED);
      const [audited] = await app.server.store.query<{ n: number }>(
        "select count(*)::int as n from audit_events where type = 'agent.refused' and target_id = $1 and details->>'reason' = 'machine_disabled'", [m.id]);
      expect(audited!.n).toBeGreaterThan(0);

      // Enabled: the same key works again.
      const enabled = await post(`/api/machines/${m.id}/enable`);
      expect(enabled.body).toMatchObject({ id: m.id, disabled_at: null });
      const back = socket();
      expect(await back.handshake(m.id, m.key, m.privateKey)).toBe(true);
      await eventually(async () => (await get(m.id)).status === "online", 3_000, "online again");
      back.close();
    });

    test("only admins disable; each change is audited once; the call is idempotent; unknown machines are a 404", async () => {
      const m = await machine();
      const tech = await app.user("technician");
      expect((await post(`/api/machines/${m.id}/disable`, tech.token)).status).toBe(403);
      expect((await post(`/api/machines/${crypto.randomUUID()}/disable`)).body).toMatchObject({ status_code: 404, error_code: "MACHINE_NOT_FOUND" });
      const first = await post(`/api/machines/${m.id}/disable`);
      const second = await post(`/api/machines/${m.id}/disable`);
      expect(second.status).toBe(200);
      expect(second.body.disabled_at).toBe(first.body.disabled_at);
      expect((await post(`/api/machines/${m.id}/enable`)).status).toBe(200);
      expect((await post(`/api/machines/${m.id}/enable`)).status).toBe(200);
      const events = (await app.call("GET", `/api/audit?target=${m.id}`, { token: app.adminToken })).body.events
        .filter((e: any) => e.type === "machine.disabled" || e.type === "machine.enabled").map((e: any) => e.type);
      expect(events.sort()).toEqual(["machine.disabled", "machine.enabled"]);
    });

    test("a disabled machine gets no new sessions, its live ones end (removal), and search finds it with status:disabled", async () => {
      const m = await machine();
      const live = socket();
      expect(await live.handshake(m.id, m.key, m.privateKey)).toBe(true);
      const s = await post("/api/sessions", app.adminToken, { machine_id: m.id });
      expect(s.status).toBe(201);
      expect((await post(`/api/machines/${m.id}/disable`)).status).toBe(200);
      await eventually(async () => (await app.call("GET", `/api/sessions/${s.body.id}`, { token: app.adminToken })).body.end_reason === "removal", 3_000, "the session ended");
      expect((await post("/api/sessions", app.adminToken, { machine_id: m.id })).body).toMatchObject({ status_code: 409, error_code: "MACHINE_DISABLED" });
      const found = (await app.call("GET", `/api/machines?q=${encodeURIComponent("status:disabled")}`, { token: app.adminToken })).body.machines.map((x: any) => x.id);
      expect(found).toContain(m.id);
      // Its agent is closed by the sweep (within a second): then it is offline, and no longer online.
      await eventually(async () => !(await app.call("GET", `/api/machines?q=${encodeURIComponent("status:online")}`, { token: app.adminToken })).body.machines.some((x: any) => x.id === m.id), 3_000, "offline");
      expect((await live.closed).code).toBe(CLOSE.MACHINE_DISABLED);
    });
  });
}
