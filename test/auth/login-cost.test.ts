import { afterAll, beforeAll, describe, expect, spyOn, test } from "bun:test";
import { login } from "../../src/auth/login.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { createUser, updateUser } from "../../src/auth/users.ts";
import type { Store } from "../../src/store/store.ts";
import { createTestDb, type TestDb } from "../helpers/stores.ts";

/**
 * A2: a failed login costs the same whatever the reason. Every path that says
 * "wrong username or password" runs exactly one Argon2id verification, so neither its time nor
 * its answer tells whether the user exists, is disabled, or just typed the wrong password.
 */
describe("failed login cost", () => {
  let db: TestDb;
  let store: Store;
  beforeAll(async () => {
    db = await createTestDb("pglite");
    store = await db.open();
    await createUser(store, DEFAULT_TENANT_ID, { username: "alice", role: "technician", password: "alice-password-1" });
    const bob = await createUser(store, DEFAULT_TENANT_ID, { username: "bob", role: "technician", password: "bob-password-12" });
    await updateUser(store, DEFAULT_TENANT_ID, bob.id, { disabled: true });
  }, 60_000);
  afterAll(async () => {
    await store?.close();
    await db?.destroy();
  });

  const attempt = async (username: string, password: string) => {
    const verify = spyOn(Bun.password, "verify");
    try {
      const out = await login(store, { username, password, ip: "127.0.0.1", userAgent: null });
      return { ok: out.ok, reason: out.ok ? null : out.reason, verifications: verify.mock.calls.length };
    } finally {
      verify.mockRestore();
    }
  };

  test("unknown user, wrong password and disabled user each pay one verification and get the same reason", async () => {
    expect(await attempt("nobody", "whatever-password")).toEqual({ ok: false, reason: "bad_credentials", verifications: 1 });
    expect(await attempt("alice", "wrong-password-1")).toEqual({ ok: false, reason: "bad_credentials", verifications: 1 });
    expect(await attempt("bob", "bob-password-12")).toEqual({ ok: false, reason: "bad_credentials", verifications: 1 });
    expect(await attempt("alice", "alice-password-1")).toEqual({ ok: true, reason: null, verifications: 1 });
  });
});
