import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { ADMIN_PASSWORD, startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

for (const flavor of FLAVORS) {
  describe(`users and login (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    });
    afterAll(async () => app?.close());

    test("the first admin exists, signs in, and sees itself", async () => {
      const me = await app.call("GET", "/api/me", { token: app.adminToken });
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ username: "admin", role: "admin", credential: "session", restricted: false });
      expect(me.body.permissions).toContain("users:write");
    });

    test("login sets an HttpOnly SameSite=Lax cookie that authenticates like the bearer token", async () => {
      const r = await fetch(`${app.url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "admin", password: ADMIN_PASSWORD }) });
      const cookie = r.headers.get("set-cookie")!;
      expect(cookie).toMatch(/^tether_session=tss_[0-9a-f]{64}; HttpOnly; SameSite=Lax; Path=\/; Max-Age=\d+/);
      const me = await fetch(`${app.url}/api/me`, { headers: { cookie: cookie.split(";")[0]! } });
      expect(me.status).toBe(200);
    });

    test("a session cookie with a broken %-escape is an invalid credential, not a server error on every route", async () => {
      // It used to throw while decoding, before any route ran: a 500 even on public routes.
      const cookie = "tether_session=%E0%A4%A";
      const me = await fetch(`${app.url}/api/me`, { headers: { cookie } });
      expect(me.status).toBe(401);
      expect((await me.json()).error_code).toBe("INVALID_CREDENTIAL");
      expect((await fetch(`${app.url}/api/version`, { headers: { cookie } })).status).toBe(200);
    });

    test("a wrong password and an unknown user get the same answer", async () => {
      const a = await app.call("POST", "/api/auth/login", { body: { username: "admin", password: "wrong-password" } });
      const b = await app.call("POST", "/api/auth/login", { body: { username: "nobody-here", password: "wrong-password" } });
      expect(a.status).toBe(401);
      expect(b.status).toBe(401);
      const strip = (x: any) => ({ ...x, correlation_id: undefined });
      expect(strip(a.body)).toEqual(strip(b.body));
    });

    test("bad input is a 400 naming the field", async () => {
      const r = await app.call("POST", "/api/users", { token: app.adminToken, body: { username: "x", role: "wizard", password: "long-enough-password" } });
      expect(r.status).toBe(400);
      expect(r.body.error_code).toBe("VALIDATION_FAILED");
      expect(r.body.detail).toContain("body.role");
    });

    test("create, list, change role; duplicates refused; disabling ends sessions at once", async () => {
      const tech = await app.user("technician");
      expect((await app.call("GET", "/api/me", { token: tech.token })).status).toBe(200);
      const dup = await app.call("POST", "/api/users", { token: app.adminToken, body: { username: tech.username.toUpperCase(), role: "auditor", password: "long-enough-password" } });
      expect(dup.status).toBe(409);
      const list = await app.call("GET", "/api/users?role=technician", { token: app.adminToken });
      expect(list.body.users.map((u: any) => u.username)).toContain(tech.username);
      // A technician may not manage users.
      expect((await app.call("GET", "/api/users", { token: tech.token })).status).toBe(403);

      const off = await app.call("PATCH", `/api/users/${tech.id}`, { token: app.adminToken, body: { disabled: true } });
      expect(off.status).toBe(200);
      expect(off.body.disabled).toBe(true);
      expect((await app.call("GET", "/api/me", { token: tech.token })).status).toBe(401);
      expect((await app.call("POST", "/api/auth/login", { body: { username: tech.username, password: tech.password } })).status).toBe(401);
    });

    test("logout and password reset revoke sessions at once", async () => {
      const a = await app.user("auditor");
      expect((await app.call("POST", "/api/auth/logout", { token: a.token })).status).toBe(204);
      expect((await app.call("GET", "/api/me", { token: a.token })).status).toBe(401);

      const b = await app.user("auditor");
      const reset = await app.call("POST", `/api/users/${b.id}/password`, { token: app.adminToken, body: { password: "a-brand-new-password" } });
      expect(reset.status).toBe(204);
      expect((await app.call("GET", "/api/me", { token: b.token })).status).toBe(401);
      expect(await app.login(b.username, "a-brand-new-password")).toMatch(/^tss_/);
    });

    test("the last admin cannot be demoted or disabled", async () => {
      const me = await app.call("GET", "/api/me", { token: app.adminToken });
      const r = await app.call("PATCH", `/api/users/${me.body.id}`, { token: app.adminToken, body: { role: "technician" } });
      expect(r.status).toBe(409);
      expect(r.body.error_code).toBe("LAST_ADMIN");
    });
  });
}
