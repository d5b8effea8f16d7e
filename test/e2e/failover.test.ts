import { afterAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { freshMachine, managedArgs, spawnAgent, type AgentProcess } from "../agent/spawn.ts";
import { FAST_AGENT_FLAGS } from "../helpers/e2e.ts";
import { callServer, dbEnv, spawnServer, type ServerProcess } from "../helpers/process.ts";
import { createTestDb, eventually, type TestDb } from "../helpers/stores.ts";

/**
 * P9 with real processes on a real PostgreSQL: one primary holds the lease, others wait as
 * standbys (503 STANDBY, /readyz role standby); kill -9 the primary and a standby serves within
 * seconds with every acknowledged message and the agent back online by itself (it knows both
 * servers); a graceful stop hands over at once; a primary paused past its lease cannot write
 * when it wakes and exits.
 */
const PASSWORD = "failover test password";
const STANDBY = /standby on (http:\/\/\S+):/;
const TTL_MS = 1_500;


describe.skipIf(!process.env.TEST_DATABASE_URL)("primary, standby and takeover (postgres)", () => {
  let db: TestDb;
  const servers: ServerProcess[] = [];
  const agents: AgentProcess[] = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const a of agents) a.proc.kill("SIGKILL");
    for (const s of servers) if (s.proc.exitCode === null) await s.kill();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    await db?.destroy();
  });

  test("standby refuses work; kill -9 of the primary: the standby serves, nothing acknowledged is lost, the agent follows; a clean stop hands over at once; a stale primary cannot write", async () => {
    db = await createTestDb("postgres");
    const env = { ...dbEnv(db.config), TETHER_ADMIN_PASSWORD: PASSWORD, TETHER_LEASE_TTL_MS: String(TTL_MS), TETHER_HEARTBEAT_MS: "300", TETHER_OFFLINE_AFTER_MS: "3000" };
    const spawn = async (standby: boolean) => {
      const s = await spawnServer("src/main.ts", env, 30_000, standby ? STANDBY : undefined);
      servers.push(s);
      return s;
    };
    const a = await spawn(false);
    const b = await spawn(true);
    const login = async (url: string) => (await callServer(url, "POST", "/api/auth/login", null, { username: "admin", password: PASSWORD })).body.token as string;

    // The standby: alive, not ready, and no work.
    expect((await callServer(b.url, "GET", "/healthz", null)).body).toMatchObject({ role: "standby" });
    const ready = await callServer(b.url, "GET", "/readyz", null);
    expect([ready.status, ready.body.role]).toEqual([503, "standby"]);
    const refused = await callServer(b.url, "POST", "/api/auth/login", null, { username: "admin", password: PASSWORD });
    expect([refused.status, refused.body.error_code]).toEqual([503, "STANDBY"]);
    expect((await callServer(a.url, "GET", "/readyz", null)).body.role).toBe("primary");

    // Work on the primary: a site, an agent that knows both servers, a room with messages.
    let token = await login(a.url);
    const site = (await callServer(a.url, "POST", "/api/sites", token, { site_code: "FAILOVER", display_name: "Failover" })).body;
    const key = (await callServer(a.url, "POST", `/api/sites/${site.id}/enrollment-key/rotate`, token)).body.key;
    const machine = freshMachine();
    dirs.push(machine.dir);
    const agent = spawnAgent(managedArgs(`${a.url},${b.url}`, { code: "FAILOVER", key }, machine.stateDir, [...FAST_AGENT_FLAGS]), { TETHER_AGENT_MACHINE_ID_FILE: machine.machineIdFile }, machine.stateDir);
    agents.push(agent);
    const machineId = (await agent.waitFor((e) => e.event === "connect.online", 15_000, "online")).machine_id as string;
    const room = (await callServer(a.url, "POST", "/api/rooms", token, { name: "through failover" })).body.id as string;

    const acked: string[] = [];
    let posting = true;
    const poster = (async () => {
      for (let i = 0; posting; i++) {
        try {
          const r = await callServer(a.url, "POST", `/api/rooms/${room}/messages`, token, { body: `m${i}`, client_id: `c${i}` });
          if (r.status === 201) acked.push(r.body.id);
        } catch {
          return;
        }
      }
    })();
    await Bun.sleep(400 + Math.floor(Math.random() * 400));
    const killedAt = Date.now();
    expect(await a.kill("SIGKILL")).not.toBe(0);
    posting = false;
    await poster;
    expect(acked.length).toBeGreaterThan(0);

    // The standby takes over once the lease expires, recovers, and serves.
    await b.waitForLine(/Tether is listening on/, 20_000);
    const servingMs = Date.now() - killedAt;
    expect((await callServer(b.url, "GET", "/readyz", null)).body.role).toBe("primary");
    token = await login(b.url);
    const stored = (await callServer(b.url, "GET", `/api/rooms/${room}/messages?limit=1000`, token)).body.messages.map((m: any) => m.id);
    for (const id of acked) expect(stored).toContain(id);
    await eventually(async () => (await callServer(b.url, "GET", `/api/machines/${machineId}`, token)).body?.status === "online", 15_000, "the agent online on the new primary");
    const onlineMs = Date.now() - killedAt;

    // A clean stop hands over at once to the next standby.
    const c = await spawn(true);
    const stopAt = Date.now();
    b.proc.kill("SIGTERM");
    await c.waitForLine(/Tether is listening on/, 10_000);
    const handoverMs = Date.now() - stopAt;
    expect(await b.proc.exited).toBe(0);

    // A primary paused past its lease (a long GC, a frozen VM): a standby takes over; when the
    // old one wakes it finds the lease gone and exits without writing.
    const d = await spawn(true);
    c.proc.kill("SIGSTOP");
    await d.waitForLine(/Tether is listening on/, 15_000);
    c.proc.kill("SIGCONT");
    expect(await Promise.race([c.proc.exited, Bun.sleep(10_000).then(() => "still running")])).toBe(70);
    expect(c.lines.join("\n")).toContain("lost the primary's lease");
    token = await login(d.url);
    expect((await callServer(d.url, "GET", `/api/rooms/${room}/messages?limit=1000`, token)).body.messages.length).toBe(stored.length);
    console.log(`[failover] kill -9 → standby serving ${servingMs} ms; → agent online ${onlineMs} ms; clean stop → next primary ${handoverMs} ms (lease ${TTL_MS} ms)`);
  }, 120_000);
});
