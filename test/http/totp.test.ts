import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as OTPAuth from "otpauth";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

const totpCode = (secret: string, at = Date.now()) =>
  new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), period: 30, digits: 6, algorithm: "SHA1" }).generate({ timestamp: at });

for (const flavor of FLAVORS) {
  describe(`TOTP second factor (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    // Mind the per-username limit (10 login attempts a minute): this test makes 9.
    test("enroll, confirm, log in with a code once, recovery codes once, disable with the password", async () => {
      const u = await app.user("technician");
      const login = (extra: Record<string, string> = {}) => app.call("POST", "/api/auth/login", { body: { username: u.username, password: u.password, ...extra } });

      // Enrollment: a base32 secret and an otpauth:// URI carrying it.
      const enroll = await app.call("POST", "/api/me/totp", { token: u.token });
      expect(enroll.status).toBe(200);
      const secret: string = enroll.body.secret;
      expect(secret).toMatch(/^[A-Z2-7]{32}$/);
      const uri = new URL(enroll.body.otpauth_uri);
      expect(uri.protocol).toBe("otpauth:");
      expect(uri.searchParams.get("secret")).toBe(secret);
      expect(uri.searchParams.get("issuer")).toBe("Tether");
      expect(decodeURIComponent(uri.pathname)).toContain(u.username);

      const wrong = await app.call("POST", "/api/me/totp/confirm", { token: u.token, body: { code: totpCode(secret, Date.now() - 3_600_000) } });
      expect(wrong.status).toBe(400);
      expect(wrong.body.error_code).toBe("TOTP_INVALID");
      const badShape = await app.call("POST", "/api/me/totp/confirm", { token: u.token, body: { code: "12ab" } });
      expect(badShape.status).toBe(400);
      expect(badShape.body.detail).toStartWith("body.code");

      const confirm = await app.call("POST", "/api/me/totp/confirm", { token: u.token, body: { code: totpCode(secret) } });
      expect(confirm.status).toBe(200);
      const codes: string[] = confirm.body.recovery_codes;
      expect(codes).toHaveLength(10);
      expect(new Set(codes).size).toBe(10);
      for (const c of codes) expect(c).toMatch(/^[0-9a-f]{5}-[0-9a-f]{5}$/);
      expect((await app.call("GET", "/api/me", { token: u.token })).body.totp_enabled).toBe(true);
      expect((await app.call("POST", "/api/me/totp", { token: u.token })).status).toBe(409);

      // Login now needs the second factor.
      const missing = await login();
      expect(missing.status).toBe(401);
      expect(missing.body.error_code).toBe("TOTP_REQUIRED");
      const bad = await login({ totp_code: totpCode(secret, Date.now() - 3_600_000) });
      expect(bad.status).toBe(401);
      expect(bad.body.error_code).toBe("TOTP_INVALID");
      // The confirmation used this time step; the next step's code is within the drift window.
      const code = totpCode(secret, Date.now() + 30_000);
      const good = await login({ totp_code: code });
      expect(good.status).toBe(200);
      expect(good.body.token).toMatch(/^tss_/);
      const replay = await login({ totp_code: code });
      expect(replay.status).toBe(401);
      expect(replay.body.error_code).toBe("TOTP_INVALID");

      // A recovery code works once (case and dash do not matter).
      expect((await login({ recovery_code: codes[0]! })).status).toBe(200);
      const again = await login({ recovery_code: codes[0]! });
      expect(again.status).toBe(401);
      expect(again.body.error_code).toBe("TOTP_INVALID");
      expect((await login({ recovery_code: codes[1]!.toUpperCase().replace("-", "") })).status).toBe(200);

      // Disabling needs the password, and is refused while policy requires a second factor.
      expect((await app.call("DELETE", "/api/me/totp", { token: u.token, body: { password: "not-the-password" } })).status).toBe(403);
      expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["technician"] } })).status).toBe(200);
      const held = await app.call("DELETE", "/api/me/totp", { token: u.token, body: { password: u.password } });
      expect(held.status).toBe(409);
      expect(held.body.error_code).toBe("TOTP_REQUIRED_BY_POLICY");
      expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } })).status).toBe(200);
      expect((await app.call("DELETE", "/api/me/totp", { token: u.token, body: { password: u.password } })).status).toBe(204);
      expect((await app.call("GET", "/api/me", { token: u.token })).body.totp_enabled).toBe(false);
      const plain = await login();
      expect(plain.status).toBe(200);
      expect(plain.body.restricted).toBe(false);
      // The old recovery codes are gone with it.
      expect(await app.server.store.query("select 1 from recovery_codes where user_id = $1", [u.id])).toHaveLength(0);
    }, 30_000);

    test("an API token cannot enroll or disable a second factor", async () => {
      const r = await app.call("POST", "/api/tokens", { token: app.adminToken, body: { name: "t", scopes: ["users:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() } });
      const pat = r.body.token;
      expect((await app.call("POST", "/api/me/totp", { token: pat })).body.error_code).toBe("SESSION_REQUIRED");
      expect((await app.call("DELETE", "/api/me/totp", { token: pat, body: { password: "whatever-it-is" } })).body.error_code).toBe("SESSION_REQUIRED");
    });
  });
}
