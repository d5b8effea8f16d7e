import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { enrolledMachine, siteWithKey } from "./fixtures.ts";

/** A cursor is opaque but comes from the caller: a forged one is a 400 naming query.cursor, never a 500. */
for (const flavor of FLAVORS) {
  describe(`machine list: forged cursors (${flavor})`, () => {
    let app: TestApp;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      const site = await siteWithKey(app);
      await enrolledMachine(app, site);
      await enrolledMachine(app, site);
    }, 60_000);
    afterAll(async () => app?.close());

    const forge = (sort: string, key: string) =>
      Buffer.from(JSON.stringify([1, sort, "asc", key, crypto.randomUUID()])).toString("base64url");

    const cases: Array<[string, string, string]> = [
      ["an impossible date", "created", "2024-13-45T25:61:61.000000Z"],
      ["an impossible last_seen date", "last_seen", "2024-02-31T00:00:00.000000Z"],
      ["a NUL in a hostname key", "hostname", "ws\u0000x"],
    ];
    for (const [what, sort, key] of cases) {
      test(`${what}: 400 VALIDATION_FAILED naming query.cursor`, async () => {
        const r = await app.call("GET", `/api/machines?sort=${sort}&limit=1&cursor=${forge(sort, key)}`, { token: app.adminToken });
        expect(r.status).toBe(400);
        expect(r.body.error_code).toBe("VALIDATION_FAILED");
        expect(r.body.detail).toContain("query.cursor");
      });
    }

    test("a real cursor still pages", async () => {
      const first = await app.call("GET", "/api/machines?sort=created&limit=1", { token: app.adminToken });
      expect(first.body.next_cursor).toBeString();
      const next = await app.call("GET", `/api/machines?sort=created&limit=1&cursor=${first.body.next_cursor}`, { token: app.adminToken });
      expect(next.status).toBe(200);
      expect(next.body.machines).toHaveLength(1);
      expect(next.body.machines[0].id).not.toBe(first.body.machines[0].id);
    });
  });
}
