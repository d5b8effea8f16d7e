import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { startTestApp, type ApiResponse, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

// The limits of src/server.ts: per username 10 attempts a minute and a lockout after 10
// consecutive failures; per IP (IPv6: per /64) a lockout after 20. 127.0.0.1 is made a trusted proxy so each
// request can come "from" its own documentation-range address (X-Forwarded-For).
const USER_FAILURES_TO_LOCK = 10;
const IP_FAILURES_TO_LOCK = 20;

const strip = (body: any) => ({ ...body, correlation_id: undefined });

for (const flavor of FLAVORS) {
  describe(`login rate limits and lockout (${flavor})`, () => {
    let app: TestApp;
    let n = 0;
    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_TRUSTED_PROXIES: "127.0.0.1" } });
    }, 60_000);
    afterAll(async () => app?.close());

    const attempt = (username: string, password: string, ip = `192.0.2.${++n % 250}`): Promise<ApiResponse> =>
      app.call("POST", "/api/auth/login", { body: { username, password }, headers: { "x-forwarded-for": ip } });

    /** Fails `USER_FAILURES_TO_LOCK` times, each from a new IP; returns the failures and the next answer. */
    async function lockOut(username: string, rightPassword: string) {
      const failures: ApiResponse[] = [];
      for (let i = 0; i < USER_FAILURES_TO_LOCK; i++) failures.push(await attempt(username, `wrong-password-${i}`));
      // Even the right password, from yet another address, in other letter case.
      const locked = await attempt(username.toUpperCase(), rightPassword);
      return { failures, locked };
    }

    test("repeated failures for one username give 429 with Retry-After, whether the user exists or not, with the same bodies", async () => {
      // Created without signing in: a successful login would count in the username's window too.
      const alice = { username: `alice-${flavor}`, password: "alice-long-enough-password", id: "" };
      const created = await app.call("POST", "/api/users", { token: app.adminToken, body: { username: alice.username, role: "technician", password: alice.password } });
      expect(created.status).toBe(201);
      alice.id = created.body.id;
      const real = await lockOut(alice.username, alice.password);
      const ghost = await lockOut(`ghost-${flavor}`, alice.password);

      for (const r of [...real.failures, ...ghost.failures]) {
        expect(r.status).toBe(401);
        expect(strip(r.body)).toEqual(strip(real.failures[0]!.body));
      }
      expect(real.failures[0]!.body.error_code).toBe("LOGIN_FAILED");

      for (const { locked } of [real, ghost]) {
        expect(locked.status).toBe(429);
        expect(locked.body.error_code).toBe("RATE_LIMITED");
        const retryAfter = Number(locked.headers.get("retry-after"));
        expect(Number.isInteger(retryAfter)).toBe(true);
        expect(retryAfter).toBeGreaterThan(0);
        expect(retryAfter).toBeLessThanOrEqual(15 * 60);
      }
      expect(strip(real.locked.body)).toEqual(strip(ghost.locked.body));

      // The lockout is per username: another user signs in from the same addresses.
      expect((await attempt("admin", "correct horse battery staple", "192.0.2.1")).status).toBe(200);

      // Audited: the failures and the lockout, with the address each came from.
      const lockouts = await app.call("GET", "/api/audit?type=auth.lockout", { token: app.adminToken });
      expect(lockouts.body.events.map((e: any) => e.actor_name).sort()).toEqual([alice.username, `ghost-${flavor}`]);
      for (const e of lockouts.body.events) expect(e.details).toEqual({ by: "username" });
      const failed = await app.call("GET", `/api/audit?type=auth.login&outcome=failure&target=${alice.id}`, { token: app.adminToken });
      expect(failed.body.events.length).toBe(USER_FAILURES_TO_LOCK);
      expect(failed.body.events[0].ip).toMatch(/^192\.0\.2\.\d+$/);
    }, 60_000);

    test("repeated failures from one address lock that address out, for every username", async () => {
      const ip = "198.51.100.23";
      for (let i = 0; i < IP_FAILURES_TO_LOCK; i++) {
        const r = await attempt(`nobody-${i}-${flavor}`, "wrong-password", ip);
        expect(r.status).toBe(401);
      }
      const locked = await attempt("admin", "correct horse battery staple", ip);
      expect(locked.status).toBe(429);
      expect(Number(locked.headers.get("retry-after"))).toBeGreaterThan(0);
      expect((await attempt("admin", "correct horse battery staple", "198.51.100.24")).status).toBe(200);
      const lockouts = await app.call("GET", "/api/audit?type=auth.lockout&outcome=failure", { token: app.adminToken });
      expect(lockouts.body.events.find((e: any) => e.ip === ip)?.details).toEqual({ by: "ip" });
    }, 60_000);

    test("an IPv6 client counts by its /64: failures spread over its addresses lock the whole /64 out, not its neighbours", async () => {
      for (let i = 0; i < IP_FAILURES_TO_LOCK; i++) {
        const r = await attempt(`v6-nobody-${i}-${flavor}`, "wrong-password", `2001:db8:77:1::${(i + 1).toString(16)}`);
        expect(r.status).toBe(401);
      }
      // A fresh address of the same /64, even with the right password: locked out.
      expect((await attempt("admin", "correct horse battery staple", "2001:db8:77:1:ffff::9")).status).toBe(429);
      // The next /64 is another client.
      expect((await attempt("admin", "correct horse battery staple", "2001:db8:77:2::1")).status).toBe(200);
      // The audit keeps each request's own address.
      const failed = await app.call("GET", "/api/audit?type=auth.login&outcome=failure&limit=200", { token: app.adminToken });
      expect(failed.body.events.some((e: any) => e.ip === "2001:db8:77:1::14")).toBe(true);
    }, 60_000);
  });
}
