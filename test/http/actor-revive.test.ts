import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

setDefaultTimeout(60_000);

/** Stops a resident actor as failed, as its supervisor would after too many restarts. */
function failActor(app: TestApp, address: string, reason: string): void {
  const system = app.server.system as unknown as { cells: Map<string, unknown>; markFailed(cell: unknown, reason: string, persist: boolean): void };
  const cell = system.cells.get(address);
  if (!cell) throw new Error(`${address} is not resident`);
  system.markFailed(cell, reason, true);
}

for (const flavor of FLAVORS) {
  describe(`POST /api/actors/:kind/:id/revive (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    const newRoom = async () => {
      const r = await app.call("POST", "/api/rooms", { token: app.adminToken, body: { name: `revive-${crypto.randomUUID().slice(0, 8)}` } });
      expect(r.status).toBe(201);
      return r.body.id as string;
    };

    test("an admin revives a failed actor: it works again, the failure is stored no more, the revive is audited", async () => {
      const id = await newRoom();
      const address = `room/${id}` as const;
      failActor(app, address, "test: too many failures");
      expect(app.server.system.failedActors().map((f) => f.address)).toContain(address);
      await eventually(async () => (await app.server.store.query<{ status: string }>("select status from actors where kind = 'room' and actor_id = $1", [id]))[0]?.status === "failed", 3_000, "the failure to be stored");

      const r = await app.call("POST", `/api/actors/room/${id}/revive`, { token: app.adminToken });
      expect(r.status).toBe(200);
      expect(r.body).toEqual({ address, revived: true, failure: "test: too many failures" });
      expect(app.server.system.failedActors().map((f) => f.address)).not.toContain(address);
      const [row] = await app.server.store.query<{ status: string; failure: string | null }>("select status, failure from actors where kind = 'room' and actor_id = $1", [id]);
      expect(row).toMatchObject({ status: "passive", failure: null });
      // Loaded again from its durable state with its next message.
      expect((await app.call("GET", `/api/rooms/${id}`, { token: app.adminToken })).status).toBe(200);
      expect((await app.server.system.inspect(address)).seq).toBeGreaterThan(0);
      const audited = await app.server.store.query<{ target_id: string; details: unknown }>("select target_id, details from audit_events where type = 'actor.revived'");
      expect(audited).toContainEqual({ target_id: id, details: { failure: "test: too many failures" } });

      const again = await app.call("POST", `/api/actors/room/${id}/revive`, { token: app.adminToken });
      expect(again.status).toBe(409);
      expect(again.body.error_code).toBe("ACTOR_NOT_FAILED");
    });

    test("admin only; an actor of no kind, or of no row of the caller's tenant, is not found", async () => {
      const id = await newRoom();
      failActor(app, `room/${id}`, "test: failed");
      for (const role of ["technician", "auditor"] as const) {
        const { token } = await app.user(role);
        const r = await app.call("POST", `/api/actors/room/${id}/revive`, { token });
        expect({ role, status: r.status, code: r.body.error_code }).toEqual({ role, status: 403, code: "FORBIDDEN" });
      }
      expect(app.server.system.failedActors().map((f) => f.address)).toContain(`room/${id}`);
      expect((await app.call("POST", `/api/actors/room/${crypto.randomUUID()}/revive`, { token: app.adminToken })).status).toBe(404);
      expect((await app.call("POST", `/api/actors/nope/${id}/revive`, { token: app.adminToken })).status).toBe(404);
      expect((await app.call("POST", `/api/actors/room/${id}/revive`, { token: app.adminToken })).status).toBe(200);
    });
  });
}
