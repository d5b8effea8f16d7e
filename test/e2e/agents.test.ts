import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { collectInventory } from "../../src/agent/inventory.ts";
import { AGENT_VERSION } from "../../src/agent/version.ts";
import { CLOSE } from "../../src/protocol/agent.ts";
import { E2e, nextLog, runName, type ManagedAgent, type Site } from "../helpers/e2e.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

/**
 * Issue 4, requirement 7, with real processes on loopback: a server (`src/main.ts`) and agents
 * (`src/agent/main.ts`), killed with SIGKILL and started again. The steps build on each other
 * (one machine "A" lives through all of them), so they run in order within a flavor.
 *
 * Short timings so the file is fast: heartbeat 300 ms, offline after 1500 ms (the server
 * sweeps every offline_after/4 = 375 ms), agent reconnect backoff 100 ms doubling to 500 ms.
 */
const HEARTBEAT_MS = 300;
const OFFLINE_AFTER_MS = 1_500;
/** One sweep (375 ms), the projection commit and our 10 ms polling, with room for a loaded 2-core box. */
const SWEEP_MARGIN_MS = 1_500;
const ADMIN_PASSWORD = "e2e agents correct horse battery";
/** Besides FAST_AGENT_FLAGS: after a refusal (revoked, removed) retry after 1 s rather than 5 min, to see the refusal repeat. */
const AGENT_FLAGS = ["--refused-retry-ms", "1000"];

for (const flavor of FLAVORS) {
  describe(`agents end to end (${flavor})`, () => {
    let e2e: E2e;
    let site: Site;
    const timings: Record<string, number> = {};

    /** Machine A: enrolled in the first step, the subject of every later one. */
    let A: ManagedAgent;
    /** Words unique to this run, for search. */
    const run = runName("e2e");
    const tags = { all: `${run}-all`, a: `${run}-only-a` };
    /** Machines B (kept online) and C (stopped) beside A, enrolled for search and removal. */
    const B = { id: "", agent: null as ManagedAgent["agent"] | null, dept: `${run}-dept-b` };
    const C = { id: "", agent: null as ManagedAgent["agent"] | null };

    const api = (method: string, path: string, body?: unknown) => e2e.api(method, path, body);
    const machine = async (id: string) => (await api("GET", `/api/machines/${id}`)).body;
    const statusOf = async (id: string) => (await machine(id))?.status as string | undefined;
    /** Ids returned by a search, sorted (the order is not what is being checked). */
    const search = async (q: string) => {
      const r = await api("GET", `/api/machines?limit=500&q=${encodeURIComponent(q)}`);
      expect(r.status).toBe(200);
      return (r.body.machines as Array<{ id: string }>).map((m) => m.id).sort();
    };

    /** Waits until `id` shows `status` in the API; returns how long that took from `since`. */
    async function waitStatus(id: string, status: "online" | "offline", timeoutMs: number, since = Date.now()): Promise<number> {
      await eventually(async () => (await statusOf(id)) === status, timeoutMs, `machine ${id} ${status}`);
      return Date.now() - since;
    }

    beforeAll(async () => {
      e2e = await E2e.create(flavor, { adminPassword: ADMIN_PASSWORD, env: { TETHER_HEARTBEAT_MS: String(HEARTBEAT_MS), TETHER_OFFLINE_AFTER_MS: String(OFFLINE_AFTER_MS) } });
      await e2e.start();
      site = await e2e.site(run);
    }, 60_000);

    afterAll(async () => {
      await e2e?.cleanup();
      console.log(`[agents e2e ${flavor}] timings (ms): ${JSON.stringify(timings)}`);
    });

    test("a new agent enrolls and comes online, and heartbeats keep it online", async () => {
      A = e2e.managed(site, [...AGENT_FLAGS, "--tag", tags.all, "--tag", tags.a]);
      const agent = A.agent;
      await agent.waitFor((e) => e.event === "enroll.done" && e.disposition === "new", 15_000, "enrolled");
      const online = await agent.waitFor((e) => e.event === "connect.online", 15_000, "online");
      A.id = online.machine_id;
      expect(online.external_ip).toBe("127.0.0.1");
      await waitStatus(A.id, "online", 5_000);

      // Alive for well over offline_after: heartbeats keep the same connection up.
      await Bun.sleep(2 * OFFLINE_AFTER_MS);
      expect(await statusOf(A.id)).toBe("online");
      expect(agent.logs.filter((e) => e.event === "connect.online")).toHaveLength(1);
      expect(agent.logs.some((e) => e.event === "connect.closed")).toBe(false);
    }, 30_000);

    // Depends on the machine API showing inventory, external_ip and agent_version.
    test("the API shows its inventory, external IP and agent version", async () => {
      const local = collectInventory(); // what an agent on this host reports
      await eventually(async () => (await machine(A.id))?.inventory?.hostname !== undefined, 5_000, "inventory in the API");
      const m = await machine(A.id);
      expect(m.inventory.hostname).toBe(hostname());
      expect(m.inventory.os).toEqual(local.os);
      expect(m.agent_version).toBe(AGENT_VERSION);
      expect(m.external_ip).toBe("127.0.0.1");
    });

    test("kill -9 the agent: offline within offline_after; restarted, it is the same machine and does not enroll again", async () => {
      const before = stateFiles(A.machine.stateDir);
      const killedAt = Date.now();
      A.agent!.proc.kill("SIGKILL");
      await A.agent!.proc.exited;
      // On loopback the kernel closes the dead process's socket, so the server usually learns
      // at once; the bound is the configured time plus one sweep either way.
      timings.killToOffline = await waitStatus(A.id, "offline", OFFLINE_AFTER_MS + SWEEP_MARGIN_MS, killedAt);
      expect(timings.killToOffline).toBeLessThanOrEqual(OFFLINE_AFTER_MS + SWEEP_MARGIN_MS);

      const agent = A.respawn();
      await agent.waitFor((e) => e.event === "credentials.loaded" && e.machine_id === A.id, 10_000, "stored credentials loaded");
      const online = await agent.waitFor((e) => e.event === "connect.online", 15_000, "online again");
      expect(online.machine_id).toBe(A.id);
      await waitStatus(A.id, "online", 5_000);

      expect(agent.logs.some((e) => String(e.event).startsWith("enroll.") || e.event === "identity.created" || e.event === "credentials.saved")).toBe(false);
      expect(stateFiles(A.machine.stateDir)).toEqual(before); // nothing rewritten
      // One machine in the whole (fresh) database, the same one, still with its one key.
      const all = await api("GET", "/api/machines?limit=500");
      expect(all.body.machines.map((m: { id: string }) => m.id)).toEqual([A.id]);
      const keys = (await api("GET", `/api/machines/${A.id}/keys`)).body.keys;
      expect(keys).toHaveLength(1);
      expect(keys[0].revoked_at).toBeNull();
    }, 30_000);

    test("a frozen agent (SIGSTOP: socket open, no heartbeats) is dropped with 4009 after offline_after; resumed, it reconnects", async () => {
      // kill -9 closes the socket; only a silent one exercises the heartbeat deadline itself.
      const agent = A.agent!;
      const from = agent.logs.length;
      const stoppedAt = Date.now();
      agent.proc.kill("SIGSTOP");
      try {
        timings.silentToOffline = await waitStatus(A.id, "offline", OFFLINE_AFTER_MS + SWEEP_MARGIN_MS, stoppedAt);
      } finally {
        agent.proc.kill("SIGCONT");
      }
      // Not before the deadline (its last heartbeat was at most one interval, plus scheduling, before the stop)…
      expect(timings.silentToOffline).toBeGreaterThanOrEqual(OFFLINE_AFTER_MS - 2 * HEARTBEAT_MS);
      // …and not much after it.
      expect(timings.silentToOffline).toBeLessThanOrEqual(OFFLINE_AFTER_MS + SWEEP_MARGIN_MS);
      const closed = await nextLog(agent, from, (e) => e.event === "connect.closed", 5_000, "the close seen by the agent");
      expect(closed.code).toBe(CLOSE.SILENT);
      await nextLog(agent, from, (e) => e.event === "connect.online", 5_000, "reconnected");
      await waitStatus(A.id, "online", 5_000);
    }, 30_000);

    test("kill -9 the server and start it on the same data and port: the agent comes back by itself", async () => {
      const agent = A.agent!;
      const from = agent.logs.length;
      const port = e2e.port;
      expect(await e2e.kill("SIGKILL")).not.toBe(0);
      await nextLog(agent, from, (e) => e.event === "connect.closed", 5_000, "the agent noticing");
      await Bun.sleep(1_000); // a few failed reconnects while the server is down

      const startedAt = Date.now();
      await e2e.start();
      expect(new URL(e2e.url).port).toBe(port);
      timings.serverStart = e2e.listeningAt - startedAt;
      const online = await nextLog(agent, from, (e) => e.event === "connect.online", 10_000, "online after the restart");
      // The agent is at most one capped backoff step (500 ms) from its next try, then a handshake.
      timings.serverUpToAgentOnline = Math.max(0, Date.parse(online.time) - e2e.listeningAt);
      expect(timings.serverUpToAgentOnline).toBeLessThan(3_000);
      expect(online.machine_id).toBe(A.id);
      await waitStatus(A.id, "online", 5_000);

      expect(agent.proc.exitCode).toBeNull(); // the same process all along
      expect(agent.logs.some((e) => String(e.event).startsWith("enroll."))).toBe(false);
      expect((await api("GET", "/api/machines?limit=500")).body.machines.map((m: { id: string }) => m.id)).toEqual([A.id]);
    }, 60_000);

    test("search returns the right rows", async () => {
      const enrollOne = async (extra: string[]) => {
        const { agent } = e2e.managed(site, [...AGENT_FLAGS, "--tag", tags.all, ...extra]);
        const online = await agent.waitFor((e) => e.event === "connect.online", 15_000, "online");
        return { id: online.machine_id as string, agent };
      };
      Object.assign(B, await enrollOne(["--department", B.dept]));
      Object.assign(C, await enrollOne([]));
      await waitStatus(B.id, "online", 5_000);
      expect(await C.agent!.stop("SIGTERM")).toBe(0);
      await waitStatus(C.id, "offline", 5_000);
      const osName = collectInventory().os?.name ?? "";
      // The inventory reaches search once the status message is projected.
      await eventually(async () => (await search(`os:"${osName}" tag:${tags.all}`)).length === 3, 5_000, "inventory searchable");

      const all = [A.id, B.id, C.id].sort();
      expect(await search(`tag:${tags.a}`)).toEqual([A.id]);
      expect(await search(B.dept)).toEqual([B.id]); // a free term matches a label
      expect(await search(`tag:${tags.all} status:online`)).toEqual([A.id, B.id].sort());
      expect(await search(`tag:${tags.all} status:offline`)).toEqual([C.id]);
      expect(await search(`tag:${tags.all} ip:127.0.0.1`)).toEqual(all); // the address the server saw
      expect(await search(`host:${hostname()} tag:${tags.all}`)).toEqual(all);
      expect(await search(`os:"${osName}" tag:${tags.all}`)).toEqual(all);
      expect(await search(site.code)).toEqual(all); // a free term matches the site code
      expect(await search(`${run}-nothing`)).toEqual([]);
    }, 60_000);

    test("revoking the live agent's key disconnects it within a second (4004); it is refused after, and does not re-enroll", async () => {
      const agent = A.agent!;
      const keys = (await api("GET", `/api/machines/${A.id}/keys`)).body.keys;
      const from = agent.logs.length;
      const sentAt = Date.now();
      expect((await api("DELETE", `/api/machines/${A.id}/keys/${keys[0].id}`)).status).toBe(204);
      const answeredAt = Date.now();
      const refused = await nextLog(agent, from, (e) => e.event === "connect.refused", 5_000, "the close seen by the agent");
      expect(refused.code).toBe(CLOSE.KEY_REVOKED);
      // The agent stamps the line when its socket's close event runs: that is the disconnect.
      // The server sweeps every 375 ms, so this is ~400 ms at worst; no margin is added.
      timings.revokeToClose = Date.parse(refused.time) - answeredAt;
      timings.revokeRequestToClose = Date.parse(refused.time) - sentAt;
      expect(timings.revokeToClose).toBeLessThan(1_000);
      await waitStatus(A.id, "offline", 2_000);

      // Its next try (1 s later) is refused at connect, and it keeps its stored identity.
      const again = await nextLog(agent, from, (e) => e.event === "connect.refused" && e !== refused, 5_000, "refused again");
      expect(again.code).toBe(CLOSE.KEY_REVOKED);
      expect(agent.logs.some((e) => String(e.event).startsWith("enroll."))).toBe(false);
      expect(await search(`tag:${tags.all}`)).toEqual([A.id, B.id, C.id].sort());
    }, 30_000);

    test("removing the machine disconnects its live agent within a second (4007); search no longer shows it", async () => {
      const agent = B.agent!;
      const from = agent.logs.length;
      expect((await api("DELETE", `/api/machines/${B.id}`)).status).toBe(204);
      const answeredAt = Date.now();
      const refused = await nextLog(agent, from, (e) => e.event === "connect.refused", 5_000, "the close seen by the agent");
      timings.removeToClose = Date.parse(refused.time) - answeredAt;
      expect(refused.code).toBe(CLOSE.MACHINE_REMOVED);
      expect(timings.removeToClose).toBeLessThan(1_000); // as for revocation: one sweep, no margin
      expect((await api("GET", `/api/machines/${B.id}`)).status).toBe(404);
      // Its next try is refused at connect with the same code (its keys were revoked with it).
      const again = await nextLog(agent, from, (e) => e.event === "connect.refused" && e !== refused, 5_000, "refused again");
      expect(again.code).toBe(CLOSE.MACHINE_REMOVED);
      expect(agent.logs.slice(from).some((e) => String(e.event).startsWith("enroll."))).toBe(false);

      expect(await search(`tag:${tags.all}`)).toEqual([A.id, C.id].sort());
      expect(await search(B.dept)).toEqual([]);
      expect(await search(`tag:${tags.all} status:online`)).toEqual([]); // A revoked, B removed, C stopped
    }, 30_000);
  });
}

/** Every file of a state dir with its content and mtime: equal snapshots mean nothing was rewritten. */
function stateFiles(dir: string): Record<string, { content: string; mtimeMs: number }> {
  const out: Record<string, { content: string; mtimeMs: number }> = {};
  for (const f of readdirSync(dir).sort()) out[f] = { content: readFileSync(join(dir, f), "utf8"), mtimeMs: statSync(join(dir, f)).mtimeMs };
  return out;
}
