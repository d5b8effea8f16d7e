import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as OTPAuth from "otpauth";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

const totpCode = (secret: string, at = Date.now()) =>
  new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), period: 30, digits: 6, algorithm: "SHA1" }).generate({ timestamp: at });

for (const flavor of FLAVORS) {
  describe(`security settings (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    test("read with settings:read, change with settings:write; bad roles are a 400 naming the field", async () => {
      const auditor = await app.user("auditor");
      const tech = await app.user("technician");
      const r = await app.call("GET", "/api/settings", { token: auditor.token });
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ require_totp_roles: [] });
      expect(Date.parse(r.body.updated_at)).toBeGreaterThan(0);
      expect((await app.call("GET", "/api/settings", { token: tech.token })).status).toBe(403);
      const denied = await app.call("PATCH", "/api/settings", { token: auditor.token, body: { require_totp_roles: ["auditor"] } });
      expect(denied.status).toBe(403);

      const bad = await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["end_user", "wizard"] } });
      expect(bad.status).toBe(400);
      expect(bad.body.error_code).toBe("VALIDATION_FAILED");
      expect(bad.body.detail).toStartWith("body.require_totp_roles.1");
      const notArray = await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: "admin" } });
      expect(notArray.body.detail).toStartWith("body.require_totp_roles");

      const ok = await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["end_user", "end_user"] } });
      expect(ok.status).toBe(200);
      expect(ok.body.require_totp_roles).toEqual(["end_user"]);
      expect((await app.call("GET", "/api/settings", { token: auditor.token })).body.require_totp_roles).toEqual(["end_user"]);

      const ev = await app.call("GET", "/api/audit?type=settings.updated", { token: app.adminToken });
      expect(ev.body.events).toHaveLength(1);
      expect(ev.body.events[0]).toMatchObject({ actor_type: "user", actor_name: "admin", target_type: "tenant", ip: "127.0.0.1", outcome: "success" });
      expect(ev.body.events[0].details.require_totp_roles).toEqual({ from: [], to: ["end_user"] });
      expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } })).status).toBe(200);
    }, 30_000);

    test("a role that requires TOTP: login is restricted to enrollment until the user confirms a second factor", async () => {
      const before = await app.user("technician"); // signed in before the policy
      expect((await app.call("GET", "/api/tokens", { token: before.token })).status).toBe(200);

      expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["technician"] } })).status).toBe(200);
      // Sessions already open are held to the new policy at once.
      const held = await app.call("GET", "/api/tokens", { token: before.token });
      expect(held.status).toBe(403);
      expect(held.body.error_code).toBe("TOTP_ENROLLMENT_REQUIRED");
      // Signing out stays possible.
      expect((await app.call("POST", "/api/auth/logout", { token: before.token })).status).toBe(204);

      const tech = await app.user("technician");
      const login = await app.call("POST", "/api/auth/login", { body: { username: tech.username, password: tech.password } });
      expect(login.status).toBe(200);
      expect(login.body.restricted).toBe(true);
      const s: string = login.body.token;

      const me = await app.call("GET", "/api/me", { token: s });
      expect(me.status).toBe(200);
      expect(me.body.restricted).toBe(true);
      for (const [method, path, body] of [
        ["GET", "/api/tokens", undefined],
        ["POST", "/api/tokens", { name: "x", scopes: ["sites:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() }],
        ["POST", "/api/me/password", { current_password: tech.password, new_password: "another-long-password" }],
        ["GET", "/api/users", undefined],
      ] as const) {
        const r = await app.call(method, path, { token: s, body });
        expect(r.status).toBe(403);
        expect(r.body.error_code).toBe("TOTP_ENROLLMENT_REQUIRED");
      }
      // Other roles are not affected.
      expect((await app.call("GET", "/api/tokens", { token: app.adminToken })).status).toBe(200);

      const enroll = await app.call("POST", "/api/me/totp", { token: s });
      expect(enroll.status).toBe(200);
      const confirm = await app.call("POST", "/api/me/totp/confirm", { token: s, body: { code: totpCode(enroll.body.secret) } });
      expect(confirm.status).toBe(200);
      // The same session is no longer restricted.
      expect((await app.call("GET", "/api/tokens", { token: s })).status).toBe(200);
      expect((await app.call("GET", "/api/me", { token: s })).body.restricted).toBe(false);
      // Nor is the next login, with the code.
      const next = await app.call("POST", "/api/auth/login", { body: { username: tech.username, password: tech.password, totp_code: totpCode(enroll.body.secret, Date.now() + 30_000) } });
      expect(next.status).toBe(200);
      expect(next.body.restricted).toBe(false);

      expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } })).status).toBe(200);
      const after = await app.call("POST", "/api/auth/login", { body: { username: before.username, password: before.password } });
      expect(after.body.restricted).toBe(false);
    }, 30_000);
  });
}
