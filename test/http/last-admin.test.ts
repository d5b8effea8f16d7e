import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

for (const flavor of FLAVORS) {
  describe(`the last admin (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
    }, 60_000);
    afterAll(async () => app?.close());

    test("two admins taking each other out at once leave one active admin", async () => {
      const me = await app.call("GET", "/api/me", { token: app.adminToken });
      for (let round = 0; round < 3; round++) {
        const other = await app.user("admin");
        const change = round === 1 ? { role: "auditor" } : { disabled: true };
        // Both credentials verified just now, so both requests reach the check together.
        await Promise.all([app.call("GET", "/api/me", { token: app.adminToken }), app.call("GET", "/api/me", { token: other.token })]);
        const [a, b] = await Promise.all([
          app.call("PATCH", `/api/users/${other.id}`, { token: app.adminToken, body: change }),
          app.call("PATCH", `/api/users/${me.body.id}`, { token: other.token, body: change }),
        ]);
        expect([a.status, b.status].sort()).toEqual([200, 409]);
        const [n] = await app.server.store.query<{ n: number }>("select count(*)::int as n from users where role = 'admin' and disabled_at is null");
        expect(Number(n!.n)).toBe(1);
        if (b.status === 200) return; // the first admin is out: nobody is left to go on with
      }
    });
  });
}
