import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { machineKind } from "../../src/actors/machine.ts";
import { Batcher } from "../../src/actors/serial.ts";
import { Lease } from "../../src/cluster/lease.ts";
import { ActorSystem } from "../../src/actors/system.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { AgentConnections, type AgentSocket } from "../../src/http/ws/agent-connections.ts";
import { silentLogger } from "../../src/log.ts";
import { mintAgentKey } from "../../src/machines/agent-keys.ts";
import { reportDisconnect } from "../../src/machines/disconnect.ts";
import { machineEffects, type Projection, Projections } from "../../src/machines/presence.ts";
import type { Queryable, Store } from "../../src/store/store.ts";
import { eventually, FLAVORS, useSharedStore } from "../helpers/stores.ts";

/** Presence writes coalesced per machine, the revocation sweep, last_used_at batching. */
for (const flavor of FLAVORS) {
  describe(`machine presence writes (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));
    let statements: string[] = [];
    const counted: Queryable = { query: (sql, params) => (statements.push(sql), store.query(sql, params)) };
    const machine = async () => {
      const id = crypto.randomUUID();
      await store.query("insert into machines (id, tenant_id, machine_uid, hostname, public_key) values ($1, $2, $3, 'H', 'pk')", [id, DEFAULT_TENANT_ID, id]);
      return id;
    };
    const row = async (id: string) => (await store.query<{ status: string; inventory: unknown; agent_version: string | null; last_seen_at: Date | string | null }>(
      "select p.status, m.inventory, m.agent_version, p.last_seen_at from machines m join machine_presence p on p.machine_id = m.id where m.id = $1", [id]))[0]!;
    /**
     * Machine actors whose journal commits through `journal` (a store that fails when a test
     * says so), their projections written to the real store; started, with their projections.
     */
    const machineSystem = async (journal: Store) => {
      const projections = new Projections(store, silentLogger);
      const system = new ActorSystem({ store: journal, logger: silentLogger });
      system.register(machineKind(machineEffects(store, new AgentConnections(store, 60_000), silentLogger, projections)));
      await system.start();
      return { system, projections };
    };
    const p = (machine_id: string, status: "online" | "offline", n: number): Projection =>
      ({ machine_id, status, last_seen: 1_700_000_000_000 + n, inventory: { hostname: `h${n}` }, external_ip: "10.0.0.1", agent_version: `v${n}` });


    test("many projections of one machine end at the last one, in few statements", async () => {
      const ids = await Promise.all(Array.from({ length: 20 }, machine));
      const projections = new Projections(counted, silentLogger);
      statements = [];
      const done: Promise<void>[] = [];
      for (let n = 0; n < 50; n++) for (const id of ids) done.push(projections.project(p(id, n % 2 === 0 ? "online" : "offline", n)));
      await Promise.all(done);
      expect(statements.length).toBeLessThanOrEqual(2);
      for (const id of ids) expect(await row(id)).toMatchObject({ status: "offline", agent_version: "v49" });
    });

    test("a projection handed in while a write runs lands after it: a quick online → offline stays offline", async () => {
      const id = await machine();
      const projections = new Projections(counted, silentLogger);
      for (let n = 0; n < 30; n++) {
        const first = projections.project(p(id, "online", 2 * n));
        // Hand the next in once the first write has started.
        await Bun.sleep(0);
        await new Promise((r) => setImmediate(r));
        const second = projections.project(p(id, "offline", 2 * n + 1));
        await Promise.all([first, second]);
        expect((await row(id)).status).toBe("offline");
      }
      expect(await row(id)).toMatchObject({ agent_version: "v59" });
    });

    test("one row the database refuses does not keep the others out", async () => {
      const [a, b] = [await machine(), await machine()];
      const projections = new Projections(counted, silentLogger);
      await Promise.all([
        projections.project(p(a, "online", 1)),
        projections.project({ ...p(b, "online", 1), inventory: { hostname: "nul\u0000byte" } }),
      ]);
      expect((await row(a)).status).toBe("online");
      expect((await row(b)).status).toBe("offline");
      await projections.flush();
    });

    test("a connect or disconnect after the details are written touches machine_presence alone, as HOT updates: no index, no machines row", async () => {
      const ids = await Promise.all(Array.from({ length: 20 }, machine));
      // An inventory the size an agent reports (about 1 KB of JSON): in machines, a page holds a
      // handful of such rows, and a new version of one rarely found room on its page (schema v16).
      const big = (id: string) => ({ ...p(id, "online", 1), inventory: { hostname: `h-${id}`, users: Array.from({ length: 40 }, (_, i) => `user-${i}-${id.slice(0, 8)}`) } });
      const projections = new Projections(store, silentLogger);
      const firsts = ids.map(big);
      await Promise.all(firsts.map((f) => projections.project(f)));
      const docs = await store.query<{ search_doc: string }>("select search_doc from machines where id = any($1::uuid[]) order by id", [ids]);
      // Each round in a transaction of its own (one connection, whose counters the xact view
      // has at once); the versions a round leaves behind are pruned by the next.
      const rounds: Array<{ machines: number; upd: number; hot: number }> = [];
      for (let round = 0; round < 3; round++) {
        rounds.push(await store.transaction(async (tx) => {
          const counts = async () => (await tx.query<{ machines: number; upd: number; hot: number }>(
            `select (select n_tup_upd::int from pg_stat_xact_user_tables where relid = 'machines'::regclass) as machines,
                    n_tup_upd::int as upd, n_tup_hot_upd::int as hot from pg_stat_xact_user_tables where relid = 'machine_presence'::regclass`))[0]!;
          const before = await counts();
          // The same writer (it knows the details it wrote), on this transaction's connection.
          const inTx = new Projections(tx, silentLogger);
          for (const f of firsts) await inTx.project(f);
          const afterDetails = await counts();
          for (const [k, f] of firsts.entries()) await inTx.project({ ...f, status: (k + round) % 2 ? "online" : "offline", last_seen: 1_800_000_000_000 + k });
          const after = await counts();
          return { machines: (after.machines ?? 0) - (afterDetails.machines ?? 0), upd: after.upd - afterDetails.upd, hot: after.hot - afterDetails.hot };
        }));
      }
      expect(rounds.at(-1)).toEqual({ machines: 0, upd: ids.length, hot: ids.length });
      // Status is matched on machine_presence; the search document did not change.
      expect(await store.query("select search_doc from machines where id = any($1::uuid[]) order by id", [ids])).toEqual(docs);
      expect((await row(ids[0]!)).last_seen_at).not.toBeNull();
    });

    test("a full projection bringing the details the row has (a restart's, a reload's) leaves the machines row alone", async () => {
      const id = await machine();
      await new Projections(store, silentLogger).project({ ...p(id, "online", 1), inventory: { hostname: "same" } });
      const updates = await store.transaction(async (tx) => {
        const machines = async () => (await tx.query<{ n: number }>("select n_tup_upd::int as n from pg_stat_xact_user_tables where relid = 'machines'::regclass"))[0]?.n ?? 0;
        const before = await machines();
        // A new writer (as after a restart) knows nothing it wrote: its first projection is full.
        await new Projections(tx, silentLogger).project({ ...p(id, "offline", 1), inventory: { hostname: "same" } });
        const unchanged = (await machines()) - before;
        await new Projections(tx, silentLogger).project({ ...p(id, "online", 1), inventory: { hostname: "changed" } });
        return { unchanged, changed: (await machines()) - before - unchanged };
      });
      expect(updates).toEqual({ unchanged: 0, changed: 1 });
      expect(await row(id)).toMatchObject({ status: "online", inventory: { hostname: "changed" } });
    });

    test("every machine has one presence row, made with it and removed with it", async () => {
      const id = await machine();
      expect(await store.query("select status, last_seen_at from machine_presence where machine_id = $1", [id])).toEqual([{ status: "offline", last_seen_at: null }]);
      await store.query("delete from machines where id = $1", [id]);
      expect(await store.query("select 1 from machine_presence where machine_id = $1", [id])).toEqual([]);
    });

    test("a projection with the details last written (the same inventory object) writes status and last seen alone", async () => {
      const [a, b] = [await machine(), await machine()];
      const projections = new Projections(counted, silentLogger);
      const first = p(a, "online", 1);
      await projections.project(first);
      statements = [];
      // The writer compares the inventory by identity (the actor keeps its object while it is
      // unchanged), so a change made behind its back shows that it was not written again.
      (first.inventory as { hostname: string }).hostname = "not written";
      await projections.project({ ...first, status: "offline", last_seen: 1_700_000_000_002 });
      expect(await row(a)).toMatchObject({ status: "offline", agent_version: "v1", inventory: { hostname: "h1" } });
      expect(statements).toHaveLength(1);
      expect(statements[0]).not.toContain("inventory");
      // An equal inventory in another object (an actor loaded again), another IP or another version: in full.
      for (const next of [{ ...first, inventory: { hostname: "h1" } }, { ...first, external_ip: "10.0.0.9" }, { ...first, agent_version: "v9" }]) {
        statements = [];
        await projections.project(next);
        expect(statements[0]).toContain("inventory");
      }
      // A changed projection replaced, before it was written, by one with the same details: in full.
      const b1 = p(b, "online", 1);
      await projections.project(b1);
      const b2 = p(b, "online", 2);
      await Promise.all([projections.project(b2), projections.project({ ...b2, status: "offline" })]);
      expect(await row(b)).toMatchObject({ status: "offline", agent_version: "v2", inventory: { hostname: "h2" } });
    });

    test("after a failed write, a machine's next projection is written in full", async () => {
      const id = await machine();
      let failing = false;
      const flaky: Queryable = { query: (sql, params) => (failing ? Promise.reject(new Error("database down")) : store.query(sql, params)) };
      const projections = new Projections(flaky, silentLogger);
      const first = p(id, "online", 1);
      await projections.project(first);
      failing = true;
      const second = p(id, "online", 2);
      await projections.project(second); // lost: logged, as a failed effect is
      failing = false;
      await projections.project({ ...second, status: "offline" });
      expect(await row(id)).toMatchObject({ status: "offline", agent_version: "v2", inventory: { hostname: "h2" } });
    });

    test("a machine actor reloaded after a commit that landed but reported failure: its next projection is written in full", async () => {
      const id = await machine();
      let ambiguous = false;
      // The journal's statement commits, then the caller hears an error (a connection lost after the commit).
      const flaky: Store = {
        ...store,
        query: async (sql, params) => {
          const rows = await store.query(sql, params);
          if (ambiguous && sql.includes("insert into actor_journal")) {
            ambiguous = false;
            throw new Error("connection reset");
          }
          return rows as never;
        },
      };
      const { system, projections } = await machineSystem(flaky);
      try {
        const connect = (conn: string, agent_version: string, hostname: string) =>
          system.ask(`machine/${id}`, { type: "agent.connected", conn, ip: "10.0.0.1", agent_version, inventory: { hostname } });
        await connect("c1", "1.0", "old");
        await projections.flush();
        ambiguous = true;
        // Journaled, but its effects never run: the actor is reloaded from what is durable.
        await connect("c2", "2.0", "new").catch(() => {});
        await eventually(async () => (await connect("c3", "2.0", "new").then(() => true, () => false)), 5_000, "the actor answers again");
        await projections.flush();
        expect(await row(id)).toMatchObject({ status: "online", agent_version: "2.0", inventory: { hostname: "new" } });
      } finally {
        await system.stop();
      }
    });

    test("a disconnect whose commit failed is asked again: the machine does not stay online with nobody there", async () => {
      const id = await machine();
      let failDisconnect = false;
      const flaky: Store = {
        ...store,
        query: async (sql, params) => {
          if (failDisconnect && sql.includes("insert into actor_journal") && JSON.stringify(params).includes("agent.disconnected")) {
            failDisconnect = false;
            throw new Error("database away");
          }
          return store.query(sql, params) as never;
        },
      };
      const { system, projections } = await machineSystem(flaky);
      try {
        await system.ask(`machine/${id}`, { type: "agent.connected", conn: "c1", ip: "10.0.0.1", agent_version: "1.0", inventory: { hostname: "h" } });
        failDisconnect = true;
        await reportDisconnect(system, id, "c1", "1000", silentLogger, [20, 40, 80, 160]);
        expect(failDisconnect).toBe(false); // the first try failed
        expect((await system.inspect(`machine/${id}`)).value).toBe("offline");
        await projections.flush();
        expect((await row(id)).status).toBe("offline");
      } finally {
        await system.stop();
      }
    });

    test("flush waits for every projection handed in", async () => {
      const id = await machine();
      const projections = new Projections(counted, silentLogger);
      void projections.project(p(id, "online", 7));
      await projections.flush();
      expect(await row(id)).toMatchObject({ status: "online", agent_version: "v7" });
    });

    test("under a lease, a deposed primary's projections are not written, and its batch fails once, not row by row", async () => {
      const [a, b, c] = [await machine(), await machine(), await machine()];
      const name = `presence-${crypto.randomUUID()}`;
      const deposed = new Lease(store, { name, ttlMs: 60_000 });
      expect(await deposed.acquire()).toBe(true);
      let fences = 0;
      const projections = new Projections(store, silentLogger, (tx) => (fences++, deposed.fence(tx)));
      await Promise.all([a, b, c].map((id) => projections.project(p(id, "online", 1))));
      expect(fences).toBe(1);
      expect(await row(a)).toMatchObject({ status: "online", agent_version: "v1" });
      // A standby takes over (the deposed one's lease expired while it was paused, say) and writes.
      await store.query("update leases set expires_at = now() - interval '1 second' where name = $1", [name]);
      const standby = new Lease(store, { name, ttlMs: 60_000 });
      expect(await standby.acquire()).toBe(true);
      const current = new Projections(store, silentLogger, (tx) => standby.fence(tx));
      await current.project({ ...p(a, "online", 2), inventory: { hostname: "current" } });
      // The deposed primary's late projections: given up on, nothing written.
      fences = 0;
      await Promise.all([a, b, c].map((id) => projections.project(p(id, "offline", 3))));
      expect(fences).toBe(1);
      expect(await row(a)).toMatchObject({ status: "online", agent_version: "v2", inventory: { hostname: "current" } });
      for (const id of [b, c]) expect(await row(id)).toMatchObject({ status: "online", agent_version: "v1" });
    });

    describe("agent connections", () => {
      let connections: AgentConnections;
      const closed: Array<{ conn: string; code: number }> = [];
      const live = (machineId: string, keyId: string): AgentSocket => {
        const s: AgentSocket = { conn: crypto.randomUUID(), machineId, keyId, tenantId: DEFAULT_TENANT_ID, lastSeen: Date.now(), close: (code) => (closed.push({ conn: s.conn, code }), connections.remove(s.conn)) };
        connections.add(s);
        return s;
      };
      beforeAll(() => {
        connections = new AgentConnections(store, 60_000);
        connections.start();
      });
      afterAll(() => {
        connections.stop(4010, "test over");
      });
      const closeOf = (s: AgentSocket) => closed.find((c) => c.conn === s.conn)?.code;

      test("a key revoked, a machine removed or sent back to pending by another process: its agent is closed within a second", async () => {
        const [m1, m2, m3, m4] = [await machine(), await machine(), await machine(), await machine()];
        const [k1, k2, k3, k4] = await Promise.all([m1, m2, m3, m4].map((m) => mintAgentKey(store, DEFAULT_TENANT_ID, m, null)));
        const [s1, s2, s3, s4] = [live(m1, k1!.id), live(m2, k2!.id), live(m3, k3!.id), live(m4, k4!.id)];
        await Bun.sleep(600); // a sweep has run: changes from here on are "since the last sweep"
        const t0 = Date.now();
        await store.query("update agent_keys set revoked_at = now() where id = $1", [k1!.id]);
        await store.transaction(async (tx) => {
          await tx.query("update machines set deleted_at = now() where id = $1", [m2]);
          await tx.query("update agent_keys set revoked_at = now() where machine_id = $1", [m2]);
        });
        await store.query("update machines set enrollment_state = 'pending' where id = $1", [m3]);
        await eventually(() => [s1, s2, s3].every((s) => closeOf(s) !== undefined), 1_000, "closed");
        expect(Date.now() - t0).toBeLessThan(1_000);
        expect([closeOf(s1), closeOf(s2), closeOf(s3), closeOf(s4)]).toEqual([4004, 4007, 4006, undefined]);
      });

      test("a revocation committed by a transaction that began before the previous sweep is still seen", async () => {
        const m = await machine();
        const k = await mintAgentKey(store, DEFAULT_TENANT_ID, m, null);
        const s = live(m, k.id);
        await store.transaction(async (tx) => {
          await tx.query("update agent_keys set revoked_at = now() where id = $1", [k.id]);
          await Bun.sleep(700); // now() is this transaction's start, before the sweep that runs meanwhile
        });
        await eventually(() => closeOf(s) !== undefined, 1_500, "closed");
        expect(closeOf(s)).toBe(4004);
      });

      test("last_used_at is written within a second, for many keys at once, and at flush", async () => {
        const ms = await Promise.all(Array.from({ length: 10 }, machine));
        const keys = await Promise.all(ms.map((m) => mintAgentKey(store, DEFAULT_TENANT_ID, m, null)));
        for (const k of keys) connections.touch(k.id);
        const used = async () => Number((await store.query<{ n: number }>(
          "select count(*)::int as n from agent_keys where last_used_at is not null and id in (select jsonb_array_elements_text($1::text::jsonb)::uuid)",
          [JSON.stringify(keys.map((k) => k.id))]))[0]!.n);
        await eventually(async () => (await used()) === 10, 2_000, "last_used_at");
        const m = await machine();
        const k = await mintAgentKey(store, DEFAULT_TENANT_ID, m, null);
        connections.touch(k.id);
        await connections.flush();
        expect((await store.query<{ last_used_at: unknown }>("select last_used_at from agent_keys where id = $1", [k.id]))[0]!.last_used_at).not.toBeNull();
      });
    });
  });
}

describe("Batcher", () => {
  test("a tick's items go in one batch, later ones in the next, in order", async () => {
    const batches: number[][] = [];
    const b = new Batcher<number, number>(async (items) => (batches.push(items), await Bun.sleep(5), items.map((i) => i * 2)));
    const first = Array.from({ length: 5 }, (_, i) => b.add(i));
    await Bun.sleep(1);
    const second = Array.from({ length: 3 }, (_, i) => b.add(10 + i));
    expect(await Promise.all([...first, ...second])).toEqual([0, 2, 4, 6, 8, 20, 22, 24]);
    expect(batches).toEqual([[0, 1, 2, 3, 4], [10, 11, 12]]);
  });

  test("a failed batch rejects its own items only; flush waits for everything", async () => {
    const b = new Batcher<number>(async (items) => {
      if (items.includes(1)) throw new Error("no");
    }, 2);
    const results = await Promise.allSettled([b.add(0), b.add(1), b.add(2)]);
    expect(results.map((r) => r.status)).toEqual(["rejected", "rejected", "fulfilled"]);
    let done = false;
    void b.add(3).then(() => (done = true));
    await b.flush();
    expect(done).toBe(true);
  });

  test("with concurrency, the next batch starts while one runs; each item still gets its own answer; flush waits for the last", async () => {
    const running: number[] = [];
    const log: string[] = [];
    let most = 0;
    const b = new Batcher<number, number>(async (items) => {
      running.push(items[0]!);
      most = Math.max(most, running.length);
      await Bun.sleep(20);
      running.splice(running.indexOf(items[0]!), 1);
      log.push(`done ${items.join(",")}`);
      return items.map((i) => i * 2);
    }, 3, 2);
    const first = Array.from({ length: 7 }, (_, i) => b.add(i));
    await Bun.sleep(5);
    const later = b.add(100);
    const flush = b.flush().then(() => void log.push("flushed"));
    expect(await Promise.all([...first, later])).toEqual([0, 2, 4, 6, 8, 10, 12, 200]);
    await flush;
    // Two at a time, never three; flushed only once the batch with the last item was done.
    expect(most).toBe(2);
    expect(log.at(-1)).toBe("flushed");
    expect(log.findIndex((l) => l.startsWith("done") && l.split(" ")[1]!.split(",").includes("100"))).toBe(log.length - 2);
  });

  test("a concurrency or batch size below one is refused", () => {
    expect(() => new Batcher(async () => {}, 1, 0)).toThrow();
    expect(() => new Batcher(async () => {}, 0)).toThrow();
    expect(() => new Batcher(async () => {}, 10, Number.NaN)).toThrow();
  });
});
