import { afterAll, beforeAll, expect, test } from "bun:test";
import { CredentialVerifier } from "../../src/auth/credentials.ts";
import type { Queryable } from "../../src/store/store.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";

/**
 * The credential cache under a burst: requests that arrive while a credential is being looked
 * up share that one lookup (bench/load.ts found dozens per second of the same session), and a
 * revocation during a lookup keeps its answer out of the cache.
 */
let app: TestApp;
beforeAll(async () => {
  app = await startTestApp("pglite");
});
afterAll(async () => app?.close());

function counting(db: Queryable): { queries: number; db: Queryable } {
  const c: { queries: number; db: Queryable } = { queries: 0, db };
  c.db = { query: (sql, params) => (c.queries++, db.query(sql, params)) } as Queryable;
  return c;
}

test("fifty concurrent requests with one session token make one lookup", async () => {
  const c = counting(app.server.store);
  const v = new CredentialVerifier(c.db);
  const results = await Promise.all(Array.from({ length: 50 }, () => v.resolve(app.adminToken)));
  expect(results.every((r) => r.ok)).toBe(true);
  const lookups = c.queries; // the session lookup, plus at most its last-used touch
  expect(lookups).toBeLessThanOrEqual(2);
  await v.resolve(app.adminToken); // cached
  expect(c.queries).toBe(lookups);
});

test("a credential forgotten while its lookup runs is answered but not cached", async () => {
  const c = counting(app.server.store);
  const v = new CredentialVerifier(c.db);
  const pending = v.resolve(app.adminToken);
  v.forgetUser("someone"); // any revocation in this process
  expect((await pending).ok).toBe(true);
  const before = c.queries;
  await v.resolve(app.adminToken);
  expect(c.queries).toBeGreaterThan(before); // looked up again, not served from the cache
});
