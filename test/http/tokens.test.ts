import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createHash } from "node:crypto";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

const inDays = (days: number) => new Date(Date.now() + days * 86_400_000).toISOString();
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

for (const flavor of FLAVORS) {
  describe(`API tokens (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    const mint = (token: string, body: Record<string, unknown>) =>
      app.call("POST", "/api/tokens", { token, body: { name: "ci", scopes: ["users:read"], expires_at: inDays(30), ...body } });

    test("mint: shown once, stored as SHA-256 only, listed as metadata, used with role ∩ scopes", async () => {
      const r = await mint(app.adminToken, { name: "deploy bot", scopes: ["users:read", "audit:read", "users:read"] });
      expect(r.status).toBe(201);
      expect(r.body).toMatchObject({ name: "deploy bot", scopes: ["audit:read", "users:read"] });
      expect(r.body.token).toMatch(/^tpat_[0-9a-f]{64}$/);
      expect(r.body.prefix).toBe(r.body.token.slice(0, 13));
      expect(Object.keys(r.body).sort()).toEqual(["created_at", "expires_at", "id", "name", "prefix", "scopes", "token"]);
      const pat: string = r.body.token;

      // Only the hash is stored; no column holds the secret.
      const rows = await app.server.store.query<Record<string, unknown>>("select * from api_tokens where id = $1", [r.body.id]);
      expect(rows[0]!.token_hash).toBe(sha256(pat));
      expect(JSON.stringify(rows)).not.toContain(pat.slice(5));

      // It works, within its scopes.
      expect((await app.call("GET", "/api/users", { token: pat })).status).toBe(200);
      expect((await app.call("GET", "/api/audit?limit=1", { token: pat })).status).toBe(200);
      const me = await app.call("GET", "/api/me", { token: pat });
      expect(me.body).toMatchObject({ username: "admin", credential: "api_token" });
      expect(me.body.permissions).toEqual(["audit:read", "users:read"]);
      // Out of scope, though the admin role has it: 403 naming the scope.
      const settings = await app.call("GET", "/api/settings", { token: pat });
      expect(settings.status).toBe(403);
      expect(settings.body.detail).toContain("settings:read");

      // Listing: metadata only, never the hash or the secret; last_used_at is kept.
      await eventually(async () => {
        const list = await app.call("GET", "/api/tokens", { token: app.adminToken });
        return list.body.tokens.find((t: any) => t.id === r.body.id)?.last_used_at !== null;
      }, 5_000, "last_used_at");
      const list = await app.call("GET", "/api/tokens", { token: app.adminToken });
      expect(list.status).toBe(200);
      const mine = list.body.tokens.find((t: any) => t.id === r.body.id);
      expect(Object.keys(mine).sort()).toEqual(["created_at", "expires_at", "id", "last_used_at", "name", "prefix", "revoked_at", "scopes"]);
      expect(mine).toMatchObject({ name: "deploy bot", prefix: r.body.prefix, revoked_at: null });
      expect(Date.parse(mine.last_used_at)).toBeGreaterThan(0);
      expect(JSON.stringify(list.body)).not.toContain(pat);
      expect(JSON.stringify(list.body)).not.toContain(sha256(pat));
    });

    test("a PAT without users:read gets 403 on GET /api/users naming the missing scope", async () => {
      const pat = (await mint(app.adminToken, { scopes: ["machines:read"] })).body.token;
      const r = await app.call("GET", "/api/users", { token: pat });
      expect(r.status).toBe(403);
      expect(r.body.error_code).toBe("FORBIDDEN");
      expect(r.body.detail).toContain("users:read");
    });

    test("a token cannot mint tokens; a scope the role lacks is a 400 naming it; end users may not mint", async () => {
      const pat = (await mint(app.adminToken, {})).body.token;
      const byToken = await mint(pat, {});
      expect(byToken.status).toBe(403);
      expect(byToken.body.error_code).toBe("SESSION_REQUIRED");

      const tech = await app.user("technician");
      const ok = await mint(tech.token, { scopes: ["machines:read"] });
      expect(ok.status).toBe(201);
      const tooMuch = await mint(tech.token, { scopes: ["machines:read", "users:write"] });
      expect(tooMuch.status).toBe(400);
      expect(tooMuch.body.error_code).toBe("SCOPE_NOT_ALLOWED");
      expect(tooMuch.body.detail).toContain("body.scopes");
      expect(tooMuch.body.detail).toContain("users:write");

      const endUser = await app.user("end_user");
      expect((await mint(endUser.token, { scopes: ["machines:read"] })).status).toBe(403);
    }, 30_000);

    test("bad input is a 400 VALIDATION_FAILED naming the field", async () => {
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ scopes: ["users:read", "root"] }, "body.scopes.1"],
        [{ scopes: [] }, "body.scopes"],
        [{ name: "" }, "body.name"],
        [{ expires_at: "tomorrow" }, "body.expires_at"],
        [{ expires_at: inDays(-1) }, "body.expires_at"],
        [{ expires_at: inDays(367) }, "body.expires_at"],
      ];
      for (const [body, field] of cases) {
        const r = await mint(app.adminToken, body);
        expect(r.status).toBe(400);
        expect(r.body.error_code).toBe("VALIDATION_FAILED");
        expect(r.body.detail).toStartWith(field);
      }
      const unknown = await mint(app.adminToken, { scopes: ["root"] });
      expect(unknown.body.detail).toContain('"root"');
      expect((await mint(app.adminToken, { expires_at: inDays(364) })).status).toBe(201);
      expect((await app.call("DELETE", "/api/tokens/not-a-uuid", { token: app.adminToken })).body.detail).toStartWith("params.id");
    });

    test("revocation works at once; someone else's token is a 404; revoking twice is harmless", async () => {
      const r = await mint(app.adminToken, {});
      const pat = r.body.token;
      expect((await app.call("GET", "/api/users", { token: pat })).status).toBe(200); // now cached by the verifier
      const other = await app.user("auditor");
      expect((await app.call("DELETE", `/api/tokens/${r.body.id}`, { token: other.token })).status).toBe(404);
      expect((await app.call("GET", "/api/users", { token: pat })).status).toBe(200);

      const del = await app.call("DELETE", `/api/tokens/${r.body.id}`, { token: app.adminToken });
      expect(del.status).toBe(204);
      const after = await app.call("GET", "/api/users", { token: pat });
      expect(after.status).toBe(401);
      expect(after.body.error_code).toBe("INVALID_CREDENTIAL");
      expect((await app.call("DELETE", `/api/tokens/${r.body.id}`, { token: app.adminToken })).status).toBe(204);
      expect((await app.call("DELETE", `/api/tokens/${crypto.randomUUID()}`, { token: app.adminToken })).status).toBe(404);

      const listed = (await app.call("GET", "/api/tokens", { token: app.adminToken })).body.tokens.find((t: any) => t.id === r.body.id);
      expect(listed.revoked_at).not.toBeNull();
      // A token may revoke itself.
      const self = await mint(app.adminToken, {});
      expect((await app.call("DELETE", `/api/tokens/${self.body.id}`, { token: self.body.token })).status).toBe(204);
      expect((await app.call("GET", "/api/me", { token: self.body.token })).status).toBe(401);

      const audit = await app.call("GET", `/api/audit?target=${r.body.id}`, { token: app.adminToken });
      expect(audit.body.events.map((e: any) => e.type)).toEqual(["token.revoked", "token.created"]);
      const revoked = audit.body.events[0];
      expect(revoked).toMatchObject({ actor_type: "user", actor_name: "admin", target_type: "api_token", ip: "127.0.0.1", outcome: "success" });
      expect(revoked.details).toMatchObject({ prefix: r.body.prefix, by: "self" });
      expect(JSON.stringify(audit.body)).not.toContain(pat);
    }, 30_000);

    test("an expired token is refused", async () => {
      const r = await mint(app.adminToken, { expires_at: new Date(Date.now() + 1_500).toISOString() });
      expect(r.status).toBe(201);
      await Bun.sleep(1_600);
      const after = await app.call("GET", "/api/users", { token: r.body.token });
      expect(after.status).toBe(401);
    });

    test("disabling the user stops their tokens at once", async () => {
      const auditor = await app.user("auditor");
      const pat = (await mint(auditor.token, { scopes: ["users:read"] })).body.token;
      expect((await app.call("GET", "/api/users", { token: pat })).status).toBe(200);
      expect((await app.call("PATCH", `/api/users/${auditor.id}`, { token: app.adminToken, body: { disabled: true } })).status).toBe(200);
      expect((await app.call("GET", "/api/users", { token: pat })).status).toBe(401);
    }, 30_000);

    test("a user moved to end_user loses their tokens (end users may hold none); another role change keeps them", async () => {
      const tech = await app.user("technician");
      const pat = (await mint(tech.token, { scopes: ["sessions:read"] })).body.token;
      expect((await app.call("GET", "/api/sessions", { token: pat })).status).toBe(200);
      expect((await app.call("PATCH", `/api/users/${tech.id}`, { token: app.adminToken, body: { role: "auditor" } })).status).toBe(200);
      expect((await app.call("GET", "/api/sessions", { token: pat })).status).toBe(200);
      expect((await app.call("PATCH", `/api/users/${tech.id}`, { token: app.adminToken, body: { role: "end_user" } })).status).toBe(200);
      expect((await app.call("GET", "/api/sessions", { token: pat })).status).toBe(401);
      const changed = (await app.call("GET", `/api/audit?type=user.updated&target=${tech.id}`, { token: app.adminToken })).body.events;
      expect(changed[0].details).toMatchObject({ role: { from: "auditor", to: "end_user" }, api_tokens_revoked: 1 });
    }, 30_000);

    test("admins list and revoke any token of their tenant; others may not", async () => {
      const tech = await app.user("technician");
      const r = await mint(tech.token, { name: "tech's", scopes: ["sites:read"] });
      const pat = r.body.token;
      expect((await app.call("GET", "/api/me", { token: pat })).status).toBe(200);

      const list = await app.call("GET", `/api/users/${tech.id}/tokens`, { token: app.adminToken });
      expect(list.status).toBe(200);
      expect(list.body.tokens.map((t: any) => t.name)).toEqual(["tech's"]);
      expect(JSON.stringify(list.body)).not.toContain(pat);
      expect((await app.call("GET", `/api/users/${tech.id}/tokens`, { token: tech.token })).status).toBe(403);
      expect((await app.call("DELETE", `/api/users/${tech.id}/tokens/${r.body.id}`, { token: tech.token })).status).toBe(403);
      const auditor = await app.user("auditor");
      expect((await app.call("GET", `/api/users/${tech.id}/tokens`, { token: auditor.token })).status).toBe(403);

      // The token id must belong to that user.
      const adminTok = await mint(app.adminToken, {});
      expect((await app.call("DELETE", `/api/users/${tech.id}/tokens/${adminTok.body.id}`, { token: app.adminToken })).status).toBe(404);
      expect((await app.call("GET", `/api/users/${crypto.randomUUID()}/tokens`, { token: app.adminToken })).status).toBe(404);

      expect((await app.call("DELETE", `/api/users/${tech.id}/tokens/${r.body.id}`, { token: app.adminToken })).status).toBe(204);
      expect((await app.call("GET", "/api/me", { token: pat })).status).toBe(401);
      const ev = await app.call("GET", `/api/audit?type=token.revoked&target=${r.body.id}`, { token: app.adminToken });
      expect(ev.body.events).toHaveLength(1);
      expect(ev.body.events[0].details).toMatchObject({ by: "admin", user_id: tech.id });
    }, 30_000);
  });
}
