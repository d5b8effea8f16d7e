import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { DEFAULT_DEAD_AFTER, watchLiveness, type PingableSocket } from "../../src/agent/liveness.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually } from "../helpers/stores.ts";
import { siteWithKey } from "../machines/fixtures.ts";
import { startBlackholeProxy, type BlackholeProxy } from "./blackhole-proxy.ts";
import { freshMachine, killAllAgents, managedArgs, spawnAgent } from "./spawn.ts";

/** A socket stand-in: counts pings, answers them with a pong while `answering`. */
class FakeSocket extends EventTarget implements PingableSocket {
  readyState = WebSocket.OPEN;
  pings = 0;
  answering = true;
  ping() {
    this.pings++;
    if (this.answering) queueMicrotask(() => this.dispatchEvent(new Event("pong")));
  }
}

describe("watchLiveness", () => {
  test("pongs keep a quiet connection alive; without them it is declared dead once, after the limit", async () => {
    const ws = new FakeSocket();
    const dead: number[] = [];
    const live = watchLiveness(ws, { intervalMs: 40, deadAfterMs: 150, onDead: (silentMs) => dead.push(silentMs) });
    await Bun.sleep(400); // ten intervals, nothing but pongs
    expect(dead).toEqual([]);
    expect(ws.pings).toBeGreaterThanOrEqual(7);
    ws.answering = false;
    const silentFrom = Date.now();
    await eventually(() => dead.length > 0, 2_000, "declared dead");
    const took = Date.now() - silentFrom;
    expect(took).toBeGreaterThanOrEqual(100); // the last pong came up to one interval before
    expect(took).toBeLessThanOrEqual(150 + 40 + 60);
    expect(dead[0]).toBeGreaterThanOrEqual(150);
    const pings = ws.pings;
    await Bun.sleep(200);
    expect(dead).toHaveLength(1); // once; the watcher stopped itself
    expect(ws.pings).toBe(pings);
    live.stop();
  });

  test("time this process was not running is not the server's silence: a late tick pings and waits one more interval", async () => {
    const ws = new FakeSocket();
    let dead = 0;
    const live = watchLiveness(ws, { intervalMs: 40, deadAfterMs: 150, onDead: () => dead++ });
    await Bun.sleep(100);
    const until = Date.now() + 400; // like SIGSTOP or a suspended VM: no timers, no I/O
    while (Date.now() < until) {}
    await Bun.sleep(200); // the pong to the late tick's ping arrives
    expect(dead).toBe(0);
    // Still a dead path once the server really stays silent after the resume.
    ws.answering = false;
    await eventually(() => dead > 0, 1_000, "declared dead");
    live.stop();
  });

  test("any frame counts as heard; the default limit is three intervals; stop() ends it", async () => {
    const ws = new FakeSocket();
    ws.answering = false;
    let dead = 0;
    const live = watchLiveness(ws, { intervalMs: 30, onDead: () => dead++ });
    expect(live.limitMs).toBe(DEFAULT_DEAD_AFTER * 30);
    const chatter = setInterval(() => ws.dispatchEvent(new MessageEvent("message", { data: new Uint8Array(1) })), 20);
    await Bun.sleep(300);
    clearInterval(chatter);
    expect(dead).toBe(0);
    expect(live.silentMs()).toBeLessThan(60);
    live.stop();
    await Bun.sleep(200);
    expect(dead).toBe(0);
  });
});

/**
 * The reviewer's half-open case, for real: an agent process connected through a proxy whose
 * connection is switched to a black hole (no bytes, no FIN, no RST). The server notices its
 * silence by heartbeats; the agent must notice the server's by its unanswered pings, drop the
 * connection and reconnect (through the proxy, whose new connections work again).
 */
describe("half-open connection", () => {
  let app: TestApp;
  let proxy: BlackholeProxy;
  const HEARTBEAT_MS = 200;
  const OFFLINE_AFTER_MS = 800;
  const FAST = ["--reconnect-base-ms", "100", "--reconnect-cap-ms", "500"];

  beforeAll(async () => {
    app = await startTestApp("pglite", { env: { TETHER_HEARTBEAT_MS: String(HEARTBEAT_MS), TETHER_OFFLINE_AFTER_MS: String(OFFLINE_AFTER_MS) } });
    const target = new URL(app.url);
    proxy = startBlackholeProxy({ hostname: target.hostname, port: Number(target.port) });
  }, 60_000);
  afterAll(async () => {
    await killAllAgents();
    proxy?.stop();
    await app?.close();
  });

  test("a black-holed connection is dropped after offline_after_ms of silence and the agent comes back by itself", async () => {
    const site = await siteWithKey(app);
    const m = freshMachine();
    const agent = spawnAgent(managedArgs(proxy.url, site, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    const online = await agent.waitFor((e) => e.event === "connect.online", 15_000, "online");
    expect(online.offline_after_ms).toBe(OFFLINE_AFTER_MS);
    const machine = `/api/machines/${online.machine_id}`;
    const status = async () => (await app.call("GET", machine, { token: app.adminToken })).body?.status;

    // A healthy, quiet connection stays up: the server sends nothing, but answers pings.
    await Bun.sleep(3 * OFFLINE_AFTER_MS);
    expect(agent.logs.filter((e) => e.event === "connect.silent" || e.event === "connect.closed")).toEqual([]);
    expect(await status()).toBe("online");

    const accepted = proxy.accepted;
    proxy.blackholeOpen();
    const cutAt = Date.now();
    const silent = await agent.waitFor((e) => e.event === "connect.silent", 5_000, "the agent noticing the dead path");
    expect(Date.now() - cutAt).toBeLessThanOrEqual(OFFLINE_AFTER_MS + HEARTBEAT_MS + 1_000);
    expect(silent.silent_ms).toBeGreaterThanOrEqual(OFFLINE_AFTER_MS);
    expect(silent.limit_ms).toBe(OFFLINE_AFTER_MS);
    expect(silent.level).toBe(40); // warn, with the reason in the message
    expect(silent.msg).toContain("the path is dead");

    const closed = await agent.waitFor((e) => e.event === "connect.closed", 2_000, "the reconnect decision");
    expect(closed.retry_in_ms).toBeLessThanOrEqual(500);
    await agent.waitFor((e) => e.event === "connect.online" && e !== online, 5_000, "online again");
    expect(proxy.accepted).toBeGreaterThan(accepted); // a new connection, not the dead one
    await eventually(async () => (await status()) === "online", 5_000, "online in the API");
    expect(await agent.stop()).toBe(0);
  }, 30_000);

  test("the attended agent too: it drops the dead connection and resumes its session with the same code", async () => {
    const created = await app.call("POST", "/api/support-codes", { token: app.adminToken, body: {} });
    expect(created.status).toBe(201);
    const { code, session_id: sessionId } = created.body;
    const session = async () => (await app.call("GET", `/api/sessions/${sessionId}`, { token: app.adminToken })).body;
    const person = spawnAgent(["--server", proxy.url, "--code", code, "--consent", "allow"]);
    const welcome = await person.waitFor((e) => e.event === "support.welcome", 15_000, "welcomed");
    await eventually(async () => (await session()).state === "active", 5_000, "active");

    proxy.blackholeOpen();
    // Its welcome has no offline_after_ms: three heartbeats of silence, as the server's own rule.
    const silent = await person.waitFor((e) => e.event === "support.silent", 5_000, "the agent noticing the dead path");
    expect(silent.limit_ms).toBe(3 * HEARTBEAT_MS);
    // The server still holds the dead socket until its heartbeat sweep: 4203 meanwhile, retried.
    await person.waitFor((e) => e.event === "support.welcome" && e !== welcome, 15_000, "welcomed again");
    await eventually(async () => (await session()).state === "active", 5_000, "active again");
    expect(person.lines.join("\n")).toContain("Reconnected.");
    const events = (await app.call("GET", `/api/sessions/${sessionId}/events`, { token: app.adminToken })).body.events.map((e: any) => e.type);
    expect(events).toContain("agent.resumed");
    await person.stop();
  }, 40_000);
});
