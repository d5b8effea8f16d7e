import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { agentIdentity } from "../helpers/agent-client.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { sseReader, wsReader } from "../helpers/room-client.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import { enroll, enrollBody, siteWithKey } from "../machines/fixtures.ts";

/**
 * Who keeps reading a room once their access is taken away. Room streams check the credential
 * only when they connect, so disabling a user, revoking a login session or an API token must end
 * the streams it opened (`access_revoked`, 4304). An end user is a member, not the owner, of
 * their own session's room, cannot add or remove members, and leaves the room of every session
 * on a machine whose grant is taken back (by hand, or with the machine's removal).
 */
for (const flavor of FLAVORS) {
  describe(`rooms: access taken away (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_ROOM_HEARTBEAT_MS: "200" } });
    });
    afterAll(async () => app?.close());

    const post = (id: string, token: string, body: string) => app.call("POST", `/api/rooms/${id}/messages`, { token, body: { body } });
    const bodies = (events: { event: string; data: string }[]) => events.filter((e) => e.event === "message").map((e) => JSON.parse(e.data).body as string);

    async function roomWith(member: { id: string }) {
      const owner = await app.user("technician");
      const id = (await app.call("POST", "/api/rooms", { token: owner.token, body: { name: "access" } })).body.id as string;
      expect((await app.call("POST", `/api/rooms/${id}/members`, { token: owner.token, body: { user_id: member.id } })).status).toBe(201);
      return { owner, id };
    }

    test("disabling a user ends their open SSE and WebSocket streams in every room with access_revoked", async () => {
      const bob = await app.user("technician");
      const a = await roomWith(bob);
      const b = await roomWith(bob);
      const sse = await sseReader(`${app.url}/api/rooms/${a.id}/stream`, bob.token);
      const ws = await wsReader(`${app.url.replace(/^http/, "ws")}/ws/rooms/${b.id}`, bob.token);
      await sse.waitFor(() => sse.live, 5000, "sse live");
      await ws.waitFor(() => ws.live, 5000, "ws live");
      expect((await app.call("PATCH", `/api/users/${bob.id}`, { token: app.adminToken, body: { disabled: true } })).status).toBe(200);
      expect(await sse.closed).toEqual({ code: 4304, reason: "access_revoked" });
      expect(await ws.closed).toEqual({ code: 4304, reason: "access_revoked" });
      expect((await post(a.id, a.owner.token, "after disable")).status).toBe(201);
      expect((await post(b.id, b.owner.token, "after disable")).status).toBe(201);
      await Bun.sleep(200);
      expect(bodies(sse.events)).not.toContain("after disable");
      expect(ws.frames.filter((f) => f.t === "message").map((f) => f.message.body)).not.toContain("after disable");
      // Membership stays (key coverage of encrypted rooms is unchanged); the credential is what went.
      const members = (await app.call("GET", `/api/rooms/${a.id}`, { token: a.owner.token })).body.members.map((m: { member: string }) => m.member);
      expect(members).toContain(bob.id);
      expect((await sseReader(`${app.url}/api/rooms/${a.id}/stream`, bob.token)).status).toBe(401);
    });

    test("revoking an API token ends only the streams it opened; logging out ends the session's", async () => {
      const bob = await app.user("technician");
      const { owner, id } = await roomWith(bob);
      const minted = await app.call("POST", "/api/tokens", { token: bob.token, body: { name: "reader", scopes: ["rooms:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() } });
      expect(minted.status).toBe(201);
      const viaToken = await sseReader(`${app.url}/api/rooms/${id}/stream`, minted.body.token);
      const viaSession = await sseReader(`${app.url}/api/rooms/${id}/stream`, bob.token);
      await viaToken.waitFor(() => viaToken.live, 5000, "token stream live");
      await viaSession.waitFor(() => viaSession.live, 5000, "session stream live");
      expect((await app.call("DELETE", `/api/tokens/${minted.body.id}`, { token: bob.token })).status).toBe(204);
      expect(await viaToken.closed).toEqual({ code: 4304, reason: "access_revoked" });
      expect((await post(id, owner.token, "after token revoke")).status).toBe(201);
      await viaSession.waitFor(() => bodies(viaSession.events).includes("after token revoke"), 5000, "session stream still live");
      expect(bodies(viaToken.events)).not.toContain("after token revoke");

      expect((await app.call("POST", "/api/auth/logout", { token: bob.token })).status).toBeLessThan(300);
      expect(await viaSession.closed).toEqual({ code: 4304, reason: "access_revoked" });
    });

    test("a user moved into a role the policy requires a second factor for, without one, loses their streams (session and token)", async () => {
      const bob = await app.user("technician");
      const { id } = await roomWith(bob);
      const minted = await app.call("POST", "/api/tokens", { token: bob.token, body: { name: "reader", scopes: ["rooms:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() } });
      const viaSession = await sseReader(`${app.url}/api/rooms/${id}/stream`, bob.token);
      const viaToken = await sseReader(`${app.url}/api/rooms/${id}/stream`, minted.body.token);
      await viaSession.waitFor(() => viaSession.live, 5000, "session stream live");
      await viaToken.waitFor(() => viaToken.live, 5000, "token stream live");
      try {
        expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["auditor"] } })).status).toBe(200);
        expect((await app.call("PATCH", `/api/users/${bob.id}`, { token: app.adminToken, body: { role: "auditor" } })).status).toBe(200);
        expect(await viaSession.closed).toEqual({ code: 4304, reason: "access_revoked" });
        expect(await viaToken.closed).toEqual({ code: 4304, reason: "access_revoked" });
      } finally {
        await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } });
      }
    });

    test("a password reset ends the streams of the user's login sessions", async () => {
      const bob = await app.user("technician");
      const { id } = await roomWith(bob);
      const sse = await sseReader(`${app.url}/api/rooms/${id}/stream`, bob.token);
      await sse.waitFor(() => sse.live, 5000, "live");
      expect((await app.call("POST", `/api/users/${bob.id}/password`, { token: app.adminToken, body: { password: "another-long-password-1" } })).status).toBe(204);
      expect(await sse.closed).toEqual({ code: 4304, reason: "access_revoked" });
    });

    test("changing one's own password ends the streams of one's other login sessions, not this one's", async () => {
      const bob = await app.user("technician");
      const { owner, id } = await roomWith(bob);
      const other = await app.login(bob.username, bob.password);
      const mine = await sseReader(`${app.url}/api/rooms/${id}/stream`, bob.token);
      const theirs = await sseReader(`${app.url}/api/rooms/${id}/stream`, other);
      await mine.waitFor(() => mine.live, 5000, "live");
      await theirs.waitFor(() => theirs.live, 5000, "live");
      expect((await app.call("POST", "/api/me/password", { token: bob.token, body: { current_password: bob.password, new_password: "a-new-long-password-2" } })).status).toBe(204);
      expect(await theirs.closed).toEqual({ code: 4304, reason: "access_revoked" });
      expect((await post(id, owner.token, "after password change")).status).toBe(201);
      await mine.waitFor(() => bodies(mine.events).includes("after password change"), 5000, "own stream still live");
      mine.stop();
    });

    test("an end user is a member of their session's room, cannot manage members, and leaves it when the grant goes", async () => {
      const site = await siteWithKey(app);
      const ident = await agentIdentity();
      const machine = (await enroll(app, await enrollBody(site, { public_key: ident.publicKey }))).body.machine_id as string;
      const u = await app.user("end_user");
      const other = await app.user("end_user");
      const tech = await app.user("technician");
      expect((await app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: machine } })).status).toBe(201);
      const s = await app.call("POST", "/api/sessions", { token: u.token, body: { machine_id: machine } });
      expect(s.status).toBe(201);
      const sid = s.body.id as string;
      let room: { status: number; body: any } = { status: 0, body: null };
      await eventually(async () => (room = await app.call("GET", `/api/rooms/${sid}`, { token: u.token })).status === 200, 5000, "session room");
      expect(room.body.members.find((m: { member: string }) => m.member === u.id)?.role).toBe("member");
      expect(room.body.members.filter((m: { role: string }) => m.role === "owner")).toEqual([]);

      // No member changes by an end user: not another end user, not an admin as owner, not leaving.
      const admin = await app.user("admin");
      for (const body of [{ user_id: other.id }, { user_id: admin.id, role: "owner" }, { user_id: tech.id }]) {
        const add = await app.call("POST", `/api/rooms/${sid}/members`, { token: u.token, body });
        expect([add.status, add.body.error_code]).toEqual([403, "FORBIDDEN"]);
      }
      const del = await app.call("DELETE", `/api/rooms/${sid}/members/${u.id}`, { token: u.token });
      expect([del.status, del.body.error_code]).toEqual([403, "FORBIDDEN"]);

      expect((await post(sid, u.token, "hello from the end user")).status).toBe(201);
      const sse = await sseReader(`${app.url}/api/rooms/${sid}/stream`, u.token);
      await sse.waitFor(() => sse.live, 5000, "live");

      // The grant goes: the session ends, and the end user is no longer in its room.
      expect((await app.call("DELETE", `/api/users/${u.id}/grants/${machine}`, { token: app.adminToken })).status).toBe(204);
      expect(await sse.closed).toEqual({ code: 4301, reason: "not_a_member" });
      expect((await app.call("GET", `/api/rooms/${sid}/messages`, { token: u.token })).status).toBe(403);
      expect((await app.call("GET", `/api/rooms/${sid}`, { token: u.token })).status).not.toBe(200);
      expect((await sseReader(`${app.url}/api/rooms/${sid}/stream`, u.token)).status).toBe(403);
    });

    test("removing the machine takes an end user's grant, and with it their place in its sessions' rooms", async () => {
      const site = await siteWithKey(app);
      const ident = await agentIdentity();
      const machine = (await enroll(app, await enrollBody(site, { public_key: ident.publicKey }))).body.machine_id as string;
      const u = await app.user("end_user");
      expect((await app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: machine } })).status).toBe(201);
      const sid = (await app.call("POST", "/api/sessions", { token: u.token, body: { machine_id: machine } })).body.id as string;
      await eventually(async () => (await app.call("GET", `/api/rooms/${sid}`, { token: u.token })).status === 200, 5000, "session room");
      const sse = await sseReader(`${app.url}/api/rooms/${sid}/stream`, u.token);
      await sse.waitFor(() => sse.live, 5000, "live");

      expect((await app.call("DELETE", `/api/machines/${machine}`, { token: app.adminToken })).status).toBe(204);
      expect(await sse.closed).toEqual({ code: 4301, reason: "not_a_member" });
      expect((await app.call("GET", `/api/rooms/${sid}/messages`, { token: u.token })).status).toBe(403);
    });

    test("a room stored before the rule (end user as its only owner) still loses the end user when the grant goes", async () => {
      const site = await siteWithKey(app);
      const ident = await agentIdentity();
      const machine = (await enroll(app, await enrollBody(site, { public_key: ident.publicKey }))).body.machine_id as string;
      const u = await app.user("end_user");
      const tech = await app.user("technician");
      expect((await app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: machine } })).status).toBe(201);
      const sid = (await app.call("POST", "/api/sessions", { token: u.token, body: { machine_id: machine } })).body.id as string;
      await eventually(async () => (await app.call("GET", `/api/rooms/${sid}`, { token: u.token })).status === 200, 5000, "session room");
      // What an older server stored: the end user owns the room; a technician is a member.
      expect((await app.server.rooms.ask(sid, { type: "member.remove", member: u.id, by: null })).ok).toBe(true);
      expect((await app.server.rooms.ask(sid, { type: "member.add", member: u.id, user_id: u.id, name: u.username, role: "owner", by: null })).ok).toBe(true);
      expect((await app.server.rooms.ask(sid, { type: "member.add", member: tech.id, user_id: tech.id, name: tech.username, role: "member", by: null })).ok).toBe(true);
      // Even as its owner, the end user manages no members.
      expect((await app.call("DELETE", `/api/rooms/${sid}/members/${tech.id}`, { token: u.token })).status).toBe(403);
      expect((await app.call("DELETE", `/api/users/${u.id}/grants/${machine}`, { token: app.adminToken })).status).toBe(204);
      expect((await app.call("GET", `/api/rooms/${sid}/messages`, { token: u.token })).status).toBe(403);
      expect((await app.call("GET", `/api/rooms/${sid}/messages`, { token: tech.token })).status).toBe(200);
    });
  });
}
