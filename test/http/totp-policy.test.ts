import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as OTPAuth from "otpauth";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

const totpCode = (secret: string, at = Date.now()) =>
  new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), period: 30, digits: 6, algorithm: "SHA1" }).generate({ timestamp: at });
const inADay = () => new Date(Date.now() + 86_400_000).toISOString();

for (const flavor of FLAVORS) {
  describe(`second factor and its policy (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    test("confirming again once a second factor is enabled is refused and keeps the recovery codes", async () => {
      const u = await app.user("technician");
      const secret: string = (await app.call("POST", "/api/me/totp", { token: u.token })).body.secret;
      const first = await app.call("POST", "/api/me/totp/confirm", { token: u.token, body: { code: totpCode(secret) } });
      expect(first.status).toBe(200);
      const codes: string[] = first.body.recovery_codes;

      // A fresh code of the enabled factor: nothing is pending, so nothing is confirmed or re-issued.
      const again = await app.call("POST", "/api/me/totp/confirm", { token: u.token, body: { code: totpCode(secret, Date.now() + 30_000) } });
      expect(again.status).toBe(400);
      expect(again.body.error_code).toBe("TOTP_INVALID");
      expect(again.body.recovery_codes).toBeUndefined();
      const enabled = await app.call("GET", `/api/audit?type=user.totp_enabled&target=${u.id}`, { token: app.adminToken });
      expect(enabled.body.events).toHaveLength(1);

      // The codes handed out at enrollment still work.
      const login = await app.call("POST", "/api/auth/login", { body: { username: u.username, password: u.password, recovery_code: codes[0] } });
      expect(login.status).toBe(200);
    });

    test("enrolling a second factor lifts only the session that confirmed it; the user's other restricted sessions end", async () => {
      const u = await app.user("technician");
      try {
        expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["technician"] } })).status).toBe(200);
        const intruder = await app.login(u.username, u.password); // the password alone: restricted
        const owner = await app.login(u.username, u.password);
        expect((await app.call("GET", "/api/sessions", { token: intruder })).body.error_code).toBe("TOTP_ENROLLMENT_REQUIRED");
        const secret: string = (await app.call("POST", "/api/me/totp", { token: owner })).body.secret;
        expect((await app.call("POST", "/api/me/totp/confirm", { token: owner, body: { code: totpCode(secret) } })).status).toBe(200);
        expect((await app.call("GET", "/api/sessions", { token: owner })).status).toBe(200);
        // Neither the intruder's session nor the one from before the policy gains anything: both end.
        expect((await app.call("GET", "/api/sessions", { token: intruder })).status).toBe(401);
        expect((await app.call("GET", "/api/me", { token: u.token })).status).toBe(401);
      } finally {
        await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } });
      }
    });

    test("an API token of a user the policy requires a second factor of, who has none, does nothing until they enroll one", async () => {
      const u = await app.user("technician");
      const minted = await app.call("POST", "/api/tokens", { token: u.token, body: { name: "ci", scopes: ["sessions:read"], expires_at: inADay() } });
      expect(minted.status).toBe(201);
      const pat: string = minted.body.token;
      // Signed out: the token is all the user has live (no session for the policy change to restrict).
      expect((await app.call("POST", "/api/auth/logout", { token: u.token })).status).toBe(204);
      expect((await app.call("GET", "/api/sessions", { token: pat })).status).toBe(200);

      try {
        expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["technician"] } })).status).toBe(200);
        // At once: the token was verified (and cached) just before.
        const refused = await app.call("GET", "/api/sessions", { token: pat });
        expect(refused.status).toBe(403);
        expect(refused.body.error_code).toBe("TOTP_ENROLLMENT_REQUIRED");
        const me = await app.call("GET", "/api/me", { token: pat });
        expect(me.status).toBe(200);
        expect(me.body.restricted).toBe(true);

        // The user signs in (restricted), enrolls a second factor: the token works again.
        const session = await app.login(u.username, u.password);
        const secret: string = (await app.call("POST", "/api/me/totp", { token: session })).body.secret;
        expect((await app.call("POST", "/api/me/totp/confirm", { token: session, body: { code: totpCode(secret) } })).status).toBe(200);
        expect((await app.call("GET", "/api/sessions", { token: pat })).status).toBe(200);
      } finally {
        await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } });
      }
    });

    test("a token of a user moved into a role the policy requires a second factor for is restricted at once", async () => {
      const u = await app.user("technician");
      const pat: string = (await app.call("POST", "/api/tokens", { token: u.token, body: { name: "ci", scopes: ["sessions:read"], expires_at: inADay() } })).body.token;
      try {
        expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["auditor"] } })).status).toBe(200);
        expect((await app.call("GET", "/api/sessions", { token: pat })).status).toBe(200);
        expect((await app.call("PATCH", `/api/users/${u.id}`, { token: app.adminToken, body: { role: "auditor" } })).status).toBe(200);
        const refused = await app.call("GET", "/api/sessions", { token: pat });
        expect(refused.status).toBe(403);
        expect(refused.body.error_code).toBe("TOTP_ENROLLMENT_REQUIRED");
      } finally {
        await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } });
      }
    });
  });
}
