import { afterAll, afterEach, describe, expect, test } from "bun:test";
import type { Server } from "bun";
import { CLOSE, Hello, Inventory, Proof, Status, Heartbeat, decode, encode, presentedHello, validate } from "../../src/protocol/agent.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually } from "../helpers/stores.ts";
import { siteWithKey } from "../machines/fixtures.ts";
import { StateDir } from "../../src/agent/state.ts";
import { freshMachine, killAllAgents, managedArgs, spawnAgent } from "./spawn.ts";

/**
 * The enrollment dispositions a real server cannot easily produce on demand (202, 5xx, a short
 * Retry-After) and the socket side, against a scripted stub that speaks src/protocol/agent.ts;
 * and key revocation against the real server.
 */
const FAST = ["--enroll-retry-ms", "800", "--enroll-short-retry-ms", "150", "--reconnect-base-ms", "100", "--reconnect-cap-ms", "400", "--refused-retry-ms", "1500"];
const MACHINE_ID = "01a204c7-0000-7000-8000-000000000001";
const KEY = "cak_" + "c".repeat(64);

let stub: Server<any> | null = null;
let app: TestApp | null = null;
afterEach(async () => {
  await killAllAgents();
  stub?.stop(true);
  stub = null;
});
afterAll(async () => {
  await killAllAgents();
  await app?.close();
});

describe("enrollment policy and the socket, against a stub server", () => {
  test("503 → short retry, 429 → Retry-After, 202 → slow retry, 201 → connect; handshake signed with the enrolled key, inventory with the proof; heartbeats; KEY_REVOKED → slow retry; SIGTERM → close 1000, exit 0", async () => {
    const script = [
      () => new Response("down", { status: 503 }),
      () => Response.json({ error: { code: "RATE_LIMITED" } }, { status: 429, headers: { "retry-after": "1" } }),
      () => Response.json({ machine_id: MACHINE_ID, enrollment_state: "pending", disposition: "collision_pending" }, { status: 202 }),
      () => Response.json({ machine_id: MACHINE_ID, key: KEY, enrollment_state: "active", disposition: "new" }, { status: 201 }),
    ];
    const enrollAt: number[] = [];
    let publicKey = "";
    const sockets: Array<{ opened: number; hello?: any; proofOk?: boolean; proofInventory?: any; heartbeats: number; statuses: any[]; closedWith?: number }> = [];
    let revokeFirst = true;
    stub = Bun.serve<{ s: any; nonce: Uint8Array<ArrayBuffer> }>({
      port: 0,
      hostname: "127.0.0.1",
      async fetch(req, server) {
        const url = new URL(req.url);
        if (url.pathname === "/api/enroll") {
          const body = await req.json();
          publicKey = body.public_key;
          enrollAt.push(Date.now());
          return script[Math.min(enrollAt.length - 1, script.length - 1)]!();
        }
        // The agent presents its hello in the upgrade's headers; the challenge goes out as the socket opens.
        const hello = validate(Hello, presentedHello(req.headers));
        if (url.pathname === "/ws/agent" && server.upgrade(req, { data: { s: { hello }, nonce: new Uint8Array() } })) return undefined;
        return new Response("no", { status: 404 });
      },
      websocket: {
        open(ws) {
          const s = { opened: Date.now(), hello: ws.data.s.hello, heartbeats: 0, statuses: [] as any[] };
          sockets.push(s);
          ws.data.s = s;
          ws.data.nonce = crypto.getRandomValues(new Uint8Array(32));
          if (s.hello) ws.send(encode({ t: "challenge", nonce: ws.data.nonce, heartbeat_ms: 100 }));
          else ws.close(CLOSE.BAD_MESSAGE, "expected hello");
        },
        async message(ws, raw) {
          const frame = new Uint8Array(raw as Buffer);
          const s = ws.data.s;
          if (s.proofOk === undefined) {
            const proof = decode(Proof, frame)!;
            const pub = await crypto.subtle.importKey("raw", Buffer.from(publicKey, "base64"), { name: "Ed25519" }, true, ["verify"]);
            s.proofOk = await crypto.subtle.verify({ name: "Ed25519" }, pub, new Uint8Array(proof.signature), ws.data.nonce);
            s.proofInventory = proof.inventory;
            if (revokeFirst) {
              revokeFirst = false;
              ws.close(CLOSE.KEY_REVOKED, "key revoked");
              return;
            }
            ws.send(encode({ t: "welcome", machine_id: MACHINE_ID, heartbeat_ms: 100, offline_after_ms: 1_000, external_ip: "127.0.0.1" }));
            return;
          }
          const hb = decode(Heartbeat, frame);
          if (hb) s.heartbeats++;
          const st = decode(Status, frame);
          if (st) s.statuses.push(st.inventory);
        },
        close(ws, code) {
          ws.data.s.closedWith = code;
        },
      },
    });
    const m = freshMachine();
    const a = spawnAgent(managedArgs(`http://127.0.0.1:${stub.port}`, { code: "HQ", key: "cek_" + "1".repeat(64) }, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });

    await a.waitFor((e) => e.event === "connect.online", 20_000, "online");
    expect(enrollAt).toHaveLength(4);
    const gaps = enrollAt.slice(1).map((t, i) => t - enrollAt[i]!);
    expect(gaps[0]).toBeLessThan(700); // 503: short (150 ms ± 10 %)
    expect(gaps[1]).toBeGreaterThanOrEqual(950); // 429: Retry-After 1 s
    expect(gaps[2]).toBeGreaterThanOrEqual(700); // 202: slow (800 ms ± 10 %)
    expect(new StateDir(m.stateDir).credentials()!.key).toBe(KEY);

    expect(sockets).toHaveLength(2);
    const [refused, ok] = sockets as [any, any];
    expect(refused.hello).toMatchObject({ t: "hello", machine_id: MACHINE_ID, key: KEY, protocol: 1 });
    expect(refused.proofOk).toBe(true);
    expect(ok.opened - refused.opened).toBeGreaterThanOrEqual(1_300); // refused-retry 1500 ms ± 10 %, not the 100 ms backoff
    const refusal = a.logs.find((e) => e.event === "connect.refused");
    expect(refusal.code).toBe(CLOSE.KEY_REVOKED);
    expect(refusal.level).toBe(50);
    expect(ok.proofOk).toBe(true);

    // The inventory rides on the proof, so no status follows the welcome until it changes or is due.
    expect(Inventory.safeParse(ok.proofInventory).success).toBe(true);
    expect(ok.proofInventory.hostname).toBeTruthy();
    await eventually(() => ok.heartbeats >= 3, 5_000, "heartbeats");
    expect(ok.statuses).toEqual([]);

    expect(await a.stop("SIGTERM")).toBe(0);
    await eventually(() => ok.closedWith !== undefined, 2_000, "close seen by the server");
    expect(ok.closedWith).toBe(1000);
    expect(a.lines.join("\n")).not.toContain(KEY);
  });

  test("a server that does not read the hello in the upgrade's headers (older, or behind a proxy that strips them): after its 4001, the hello goes as a frame", async () => {
    const m = freshMachine();
    const seen: Array<{ headers: boolean; frame: boolean }> = [];
    stub = Bun.serve<{ s: { headers: boolean; frame: boolean }; timer: ReturnType<typeof setTimeout> | null }>({
      port: 0,
      hostname: "127.0.0.1",
      fetch(req, server) {
        const url = new URL(req.url);
        if (url.pathname === "/api/enroll") return Response.json({ machine_id: MACHINE_ID, key: KEY, enrollment_state: "active", disposition: "new" }, { status: 201 });
        const s = { headers: presentedHello(req.headers) !== null, frame: false };
        if (server.upgrade(req, { data: { s, timer: null } })) return undefined;
        return new Response("no", { status: 404 });
      },
      websocket: {
        // The server of the frame-only protocol: a hello frame, or 4001 (here after 300 ms, not 5 s).
        open(ws) {
          seen.push(ws.data.s);
          ws.data.timer = setTimeout(() => ws.close(CLOSE.HANDSHAKE_TIMEOUT, "no hello in time"), 300);
        },
        message(ws, raw) {
          const frame = new Uint8Array(raw as Buffer);
          if (!ws.data.s.frame && decode(Hello, frame)) {
            ws.data.s.frame = true;
            clearTimeout(ws.data.timer!);
            ws.send(encode({ t: "challenge", nonce: crypto.getRandomValues(new Uint8Array(32)), heartbeat_ms: 200 }));
          } else if (decode(Proof, frame)) {
            ws.send(encode({ t: "welcome", machine_id: MACHINE_ID, heartbeat_ms: 200, offline_after_ms: 2_000, external_ip: "127.0.0.1" }));
          }
        },
      },
    });
    const a = spawnAgent(managedArgs(`http://127.0.0.1:${stub.port}`, { code: "HQ", key: "cek_x" }, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await a.waitFor((e) => e.event === "connect.online", 10_000, "online");
    expect(seen).toEqual([{ headers: true, frame: false }, { headers: false, frame: true }]);
    expect(a.logs.some((e) => e.event === "connect.hello_frame")).toBe(true);
    expect(await a.stop()).toBe(0);
  });

  test("SUPERSEDED: backs off (to the cap) instead of reconnecting at once", async () => {
    const m = freshMachine();
    const opened: number[] = [];
    stub = Bun.serve<null>({
      port: 0,
      hostname: "127.0.0.1",
      async fetch(req, server) {
        const url = new URL(req.url);
        if (url.pathname === "/api/enroll") return Response.json({ machine_id: MACHINE_ID, key: KEY, enrollment_state: "active", disposition: "new" }, { status: 201 });
        if (server.upgrade(req, { data: null })) return undefined;
        return new Response("no", { status: 404 });
      },
      websocket: {
        open(ws) {
          opened.push(Date.now());
          if (opened.length === 1) ws.close(CLOSE.SUPERSEDED, "superseded");
        },
        message() {},
      },
    });
    const a = spawnAgent(managedArgs(`http://127.0.0.1:${stub.port}`, { code: "HQ", key: "cek_x" }, m.stateDir, [...FAST, "--reconnect-cap-ms", "1000"]), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    await eventually(() => opened.length >= 2, 10_000, "a second connection");
    expect(opened[1]! - opened[0]!).toBeGreaterThanOrEqual(850);
    expect(a.logs.find((e) => e.event === "connect.closed")?.code).toBe(CLOSE.SUPERSEDED);
    expect(await a.stop()).toBe(0);
  });
});

describe("against the real server", () => {
  test("revoking the agent key disconnects it with KEY_REVOKED; the agent does not re-enroll", async () => {
    app = await startTestApp("pglite");
    const site = await siteWithKey(app);
    const m = freshMachine();
    const a = spawnAgent(managedArgs(app.url, site, m.stateDir, FAST), { TETHER_AGENT_MACHINE_ID_FILE: m.machineIdFile });
    const online = await a.waitFor((e) => e.event === "connect.online", 15_000, "online");
    const keys = await app.call("GET", `/api/machines/${online.machine_id}/keys`, { token: app.adminToken });
    const list = Array.isArray(keys.body) ? keys.body : keys.body.keys;
    const revoked = await app.call("DELETE", `/api/machines/${online.machine_id}/keys/${list[0].id}`, { token: app.adminToken });
    expect(revoked.status).toBeLessThan(300);
    const refused = await a.waitFor((e) => e.event === "connect.refused" || e.event === "connect.closed", 5_000, "disconnect");
    expect(refused.event).toBe("connect.refused");
    expect(refused.code).toBe(CLOSE.KEY_REVOKED);
    // Next attempt (1.5 s later) is refused again, with the same key: no enrollment in between.
    await eventually(() => a.logs.filter((e) => e.event === "connect.refused").length >= 2, 6_000, "second refusal");
    expect(a.logs.slice(a.logs.indexOf(online)).some((e) => String(e.event).startsWith("enroll."))).toBe(false);
    expect(await a.stop()).toBe(0);
  });
});
