import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { ADMIN_PASSWORD, startTestApp, type ApiResponse, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

// The limit of src/server.ts: 10 wrong current passwords in a row, per user, lock the user's
// self-service password checks (POST /api/me/password, DELETE /api/me/totp) out for 15 minutes.
const FAILURES_TO_LOCK = 10;

for (const flavor of FLAVORS) {
  describe(`self-service password checks are limited per user (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    const changePassword = (token: string, current: string, next = `new-${Math.random().toString(36).slice(2)}-long-enough`): Promise<ApiResponse> =>
      app.call("POST", "/api/me/password", { token, body: { current_password: current, new_password: next } });
    const disableTotp = (token: string, password: string): Promise<ApiResponse> => app.call("DELETE", "/api/me/totp", { token, body: { password } });

    test("10 wrong current passwords lock both routes out for that user (429 + Retry-After, even with the right password), audited once", async () => {
      const u = await app.user("technician");
      const other = await app.user("technician");
      for (let i = 0; i < FAILURES_TO_LOCK; i++) {
        // Failures on either route count in one streak.
        const r = i % 2 ? await disableTotp(u.token, `wrong-${i}`) : await changePassword(u.token, `wrong-${i}`);
        expect(r.status).toBe(403);
        expect(r.body.error_code).toBe("PASSWORD_INCORRECT");
      }
      for (const locked of [await changePassword(u.token, u.password), await disableTotp(u.token, u.password)]) {
        expect(locked.status).toBe(429);
        expect(locked.body.error_code).toBe("RATE_LIMITED");
        const retryAfter = Number(locked.headers.get("retry-after"));
        expect(Number.isInteger(retryAfter)).toBe(true);
        expect(retryAfter).toBeGreaterThan(0);
        expect(retryAfter).toBeLessThanOrEqual(15 * 60);
      }
      // The password did not change: the user still signs in with it.
      expect((await app.call("POST", "/api/auth/login", { body: { username: u.username, password: u.password } })).status).toBe(200);
      // Per user: another user's checks are untouched.
      expect((await changePassword(other.token, other.password)).status).toBe(204);

      const lockouts = await app.call("GET", `/api/audit?type=auth.lockout&target=${u.id}`, { token: app.adminToken });
      expect(lockouts.status).toBe(200);
      expect(lockouts.body.events.length).toBe(1);
      const [e] = lockouts.body.events;
      expect(e.outcome).toBe("failure");
      expect(e.actor_id).toBe(u.id);
      expect(e.details).toEqual({ by: "password_check" });
    }, 60_000);

    test("a right password resets the streak of failures", async () => {
      const u = await app.user("technician");
      let password = u.password;
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < FAILURES_TO_LOCK - 1; i++) expect((await changePassword(u.token, `wrong-${round}-${i}`)).status).toBe(403);
        const next = `next-${round}-${u.password}`;
        expect((await changePassword(u.token, password, next)).status).toBe(204);
        password = next;
      }
      expect((await disableTotp(u.token, password)).status).toBe(204);
      const lockouts = await app.call("GET", `/api/audit?type=auth.lockout&target=${u.id}`, { token: app.adminToken });
      expect(lockouts.body.events.length).toBe(0);
    }, 60_000);
  });

  describe(`the session cookie's Secure flag behind a reverse proxy (${flavor})`, () => {
    // `proxied` trusts 127.0.0.1 (where the test client connects from) as a proxy; `direct` trusts none.
    let proxied: TestApp;
    let direct: TestApp;
    beforeAll(async () => {
      proxied = await startTestApp(flavor, { env: { TETHER_TRUSTED_PROXIES: "127.0.0.1" } });
      direct = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => {
      await proxied?.close();
      await direct?.close();
    });

    const cookieOf = async (app: TestApp, headers: Record<string, string>) => {
      const r = await app.call("POST", "/api/auth/login", { body: { username: "admin", password: ADMIN_PASSWORD }, headers });
      expect(r.status).toBe(200);
      const cookie = r.headers.get("set-cookie") ?? "";
      expect(cookie).toStartWith("tether_session=");
      return cookie;
    };
    const secure = (cookie: string) => cookie.split(";").some((p) => p.trim().toLowerCase() === "secure");

    test("a trusted proxy's X-Forwarded-Proto: https makes the cookie Secure; plain http or http from the proxy does not", async () => {
      expect(secure(await cookieOf(proxied, { "x-forwarded-proto": "https", "x-forwarded-for": "192.0.2.10" }))).toBe(true);
      expect(secure(await cookieOf(proxied, { "x-forwarded-proto": "https" }))).toBe(true);
      expect(secure(await cookieOf(proxied, { "x-forwarded-proto": "http" }))).toBe(false);
      expect(secure(await cookieOf(proxied, {}))).toBe(false);
    }, 60_000);

    test("X-Forwarded-Proto from a peer that is not a trusted proxy is ignored", async () => {
      expect(secure(await cookieOf(direct, { "x-forwarded-proto": "https" }))).toBe(false);
      expect(secure(await cookieOf(direct, {}))).toBe(false);
    }, 60_000);
  });
}
