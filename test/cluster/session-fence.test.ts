import { describe, expect, test } from "bun:test";
import { Serial } from "../../src/actors/serial.ts";
import type { Effect } from "../../src/actors/types.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { Lease, LeaseLostError } from "../../src/cluster/lease.ts";
import { silentLogger } from "../../src/log.ts";
import type { Relay } from "../../src/relay/relay.ts";
import { sessionEffects } from "../../src/sessions/effects.ts";
import type { Store } from "../../src/store/store.ts";
import { FLAVORS, useSharedStore } from "../helpers/stores.ts";

/**
 * The session actor's projections under the primary's lease (P9), as the journal's and
 * presence's: a primary that committed a session event, then stalled past the lease's TTL
 * before its projection ran, writes nothing once a standby has taken over. Without the fence
 * its late `agent_lost` would reopen the session the standby had ended, and nothing would
 * correct the row (the actor has ended).
 */
for (const flavor of FLAVORS) {
  describe(`session projections under a lease (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));
    // Only the row writes are exercised: the relay is never reached.
    const relay = {} as Relay;
    const effectsOf = (lease: Lease) => sessionEffects(store, relay, silentLogger, new Serial(), undefined, (tx) => lease.fence(tx));
    const session = async () => {
      const id = crypto.randomUUID();
      await store.query("insert into sessions (id, tenant_id, kind, technician, state) values ($1, $2, 'unattended', 'tech', 'waiting_for_agent')", [id, DEFAULT_TENANT_ID]);
      return id;
    };
    const project = (session_id: string, state: string, ended_at: number | null): Effect => ({
      type: "session.project", session_id, state, end_reason: ended_at === null ? null : "technician", consent: "not_required",
      agent_conn: null, attended: null, viewers: 0, started_at: 1_700_000_000_000, ended_at,
    });
    const event = (session_id: string, type: string, at: number): Effect =>
      ({ type: "session.event", session_id, tenant_id: DEFAULT_TENANT_ID, event: type, actor: null, details: {}, at });
    const row = async (id: string) => (await store.query<{ state: string; end_reason: string | null; ended_at: Date | string | null }>(
      "select state, end_reason, ended_at from sessions where id = $1", [id]))[0]!;
    const events = async (id: string) => (await store.query<{ type: string }>("select type from session_events where session_id = $1 order by id", [id])).map((r) => r.type);
    const audited = async (id: string) => (await store.query<{ type: string }>("select type from audit_events where target_id = $1 order by id", [id])).map((r) => r.type);

    test("a deposed primary's late projection and event are refused: the session the standby ended stays ended", async () => {
      const id = await session();
      const name = `sessions-${crypto.randomUUID()}`;
      const deposed = new Lease(store, { name, ttlMs: 60_000 });
      expect(await deposed.acquire()).toBe(true);
      const a = effectsOf(deposed);
      // While its lease is valid, the primary's projections land.
      await a["session.event"](event(id, "agent.attached", 1_700_000_000_000));
      await a["session.project"](project(id, "active", null));
      expect(await row(id)).toMatchObject({ state: "active", ended_at: null });

      // It stalls past the lease's TTL (GC, a paused VM); a standby takes over, recovers the
      // session actor and ends it.
      await store.query("update leases set expires_at = now() - interval '1 second' where name = $1", [name]);
      const standby = new Lease(store, { name, ttlMs: 60_000 });
      expect(await standby.acquire()).toBe(true);
      const b = effectsOf(standby);
      await b["session.event"](event(id, "session.ended", 1_700_000_000_002));
      await b["session.project"](project(id, "ended", 1_700_000_000_002));
      expect(await row(id)).toMatchObject({ state: "ended", end_reason: "technician" });

      // The deposed primary resumes and runs what it had queued: refused, nothing written.
      await expect(a["session.event"](event(id, "agent.lost", 1_700_000_000_001))).rejects.toBeInstanceOf(LeaseLostError);
      await expect(a["session.project"](project(id, "agent_lost", null))).rejects.toBeInstanceOf(LeaseLostError);
      const after = await row(id);
      expect(after).toMatchObject({ state: "ended", end_reason: "technician" });
      expect(after.ended_at).not.toBeNull();
      expect(await events(id)).toEqual(["agent.attached", "session.ended"]);
      expect(await audited(id)).toEqual(["session.agent.attached", "session.ended"]);
    });
  });
}
