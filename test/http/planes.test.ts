import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createUser } from "../../src/auth/users.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { enrollBody, enroll, enrolledMachine, siteWithKey } from "../machines/fixtures.ts";

/**
 * The credential-plane matrix (A1–A9, M1–M2): every /api route against no credential,
 * credentials of other planes, a disabled user, a user of another tenant, an API token
 * without the scope, and each role. The route list is read from the OpenAPI document, so a
 * new route without a row here fails the test.
 */
type Need = "public" | "self" | "self-session" | "not-end-user-session" | `${string}:${string}`;
interface Row {
  method: string;
  path: string;
  need: Need;
  body?: (ids: Ids) => unknown;
  /** Refused to end users even though their role has the permission (footnote ³ of PERMISSIONS.md). */
  notEndUser?: true;
}
interface Ids {
  userId: string;
  machineId: string;
  siteId: string;
  keyId: string;
  tokenId: string;
  random: string;
}

let n = 0;
const ROWS: Row[] = [
  { method: "POST", path: "/api/auth/login", need: "public" },
  { method: "POST", path: "/api/enroll", need: "public" },
  { method: "GET", path: "/api/version", need: "public" },
  { method: "GET", path: "/api/agent/binary", need: "public" },
  { method: "GET", path: "/api/agent/install.sh", need: "public" },
  { method: "GET", path: "/api/me", need: "self" },
  { method: "POST", path: "/api/auth/logout", need: "self-session" },
  { method: "POST", path: "/api/me/totp", need: "self-session" },
  { method: "POST", path: "/api/me/totp/confirm", need: "self-session", body: () => ({ code: "000000" }) },
  { method: "DELETE", path: "/api/me/totp", need: "self-session", body: () => ({ password: "not-the-password" }) },
  { method: "POST", path: "/api/me/password", need: "self-session", body: () => ({ current_password: "not-the-password", new_password: "a-new-long-password" }) },
  { method: "GET", path: "/api/tokens", need: "self" },
  { method: "POST", path: "/api/tokens", need: "not-end-user-session", body: () => ({ name: `t${++n}`, scopes: ["machines:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() }) },
  { method: "DELETE", path: "/api/tokens/{id}", need: "self" },
  { method: "GET", path: "/api/users", need: "users:read" },
  { method: "POST", path: "/api/users", need: "users:write", body: () => ({ username: `matrix-${++n}-${Date.now()}`, role: "auditor", password: "long-enough-password" }) },
  { method: "GET", path: "/api/users/{id}", need: "users:read" },
  { method: "PATCH", path: "/api/users/{id}", need: "users:write", body: () => ({ display_name: "Renamed" }) },
  { method: "POST", path: "/api/users/{id}/password", need: "users:write", body: () => ({ password: "another-long-password" }) },
  { method: "GET", path: "/api/users/{id}/tokens", need: "users:write" },
  { method: "DELETE", path: "/api/users/{id}/tokens/{token_id}", need: "users:write" },
  { method: "GET", path: "/api/users/{id}/grants", need: "users:read" },
  { method: "POST", path: "/api/users/{id}/grants", need: "grants:write", body: (ids) => ({ machine_id: ids.random }) },
  { method: "DELETE", path: "/api/users/{id}/grants/{machine_id}", need: "grants:write" },
  { method: "GET", path: "/api/settings", need: "settings:read" },
  { method: "PATCH", path: "/api/settings", need: "settings:write", body: () => ({ require_totp_roles: [] }) },
  { method: "GET", path: "/api/sites", need: "sites:read" },
  { method: "POST", path: "/api/sites", need: "sites:write", body: () => ({ site_code: `M${++n}X${Date.now() % 100000}`, display_name: "Matrix", company: "Acme" }) },
  { method: "GET", path: "/api/sites/{id}", need: "sites:read" },
  { method: "GET", path: "/api/sites/{id}/enrollment-key", need: "sites:read" },
  { method: "POST", path: "/api/sites/{id}/enrollment-key/rotate", need: "sites:write" },
  { method: "GET", path: "/api/machines", need: "machines:read" },
  { method: "GET", path: "/api/machines/{id}", need: "machines:read" },
  { method: "DELETE", path: "/api/machines/{id}", need: "machines:write" },
  { method: "POST", path: "/api/machines/bulk-delete", need: "machines:write", body: (ids) => ({ ids: [ids.random] }) },
  { method: "POST", path: "/api/machines/{id}/disable", need: "machines:write" },
  { method: "POST", path: "/api/machines/{id}/enable", need: "machines:write" },
  { method: "POST", path: "/api/machines/{id}/approve", need: "machines:write" },
  { method: "POST", path: "/api/machines/{id}/reject", need: "machines:write" },
  { method: "GET", path: "/api/machines/{id}/keys", need: "agent_keys:read" },
  { method: "POST", path: "/api/machines/{id}/keys", need: "agent_keys:write" },
  { method: "DELETE", path: "/api/machines/{id}/keys/{key_id}", need: "agent_keys:write" },
  { method: "GET", path: "/api/audit", need: "audit:read" },
  { method: "POST", path: "/api/sessions", need: "sessions:write", body: (ids) => ({ machine_id: ids.random }) },
  { method: "GET", path: "/api/sessions", need: "sessions:read" },
  { method: "GET", path: "/api/sessions/{id}", need: "sessions:read" },
  { method: "GET", path: "/api/sessions/{id}/events", need: "sessions:read" },
  { method: "POST", path: "/api/sessions/{id}/end", need: "sessions:write" },
  { method: "POST", path: "/api/sessions/{id}/viewer-token", need: "sessions:write", body: () => ({ access: "view" }) },
  { method: "DELETE", path: "/api/sessions/{id}/viewer-tokens/{token_id}", need: "sessions:write" },
  { method: "POST", path: "/api/support-codes", need: "support_codes:write", body: () => ({}) },
  { method: "POST", path: "/api/support-codes/{code}/cancel", need: "support_codes:write" },
  { method: "GET", path: "/api/sessions/{id}/recordings", need: "recordings:read" },
  { method: "GET", path: "/api/machines/{id}/recordings", need: "recordings:read" },
  { method: "GET", path: "/api/recordings/{id}", need: "recordings:read" },
  { method: "GET", path: "/api/recordings/{id}/cast", need: "recordings:read" },
  { method: "POST", path: "/api/rooms", need: "rooms:write", body: () => ({ name: "planes" }), notEndUser: true },
  { method: "GET", path: "/api/rooms", need: "rooms:read" },
  { method: "GET", path: "/api/rooms/{id}", need: "rooms:read" },
  { method: "POST", path: "/api/rooms/{id}/members", need: "rooms:write", body: (ids) => ({ user_id: ids.random }), notEndUser: true },
  { method: "DELETE", path: "/api/rooms/{id}/members/{member}", need: "rooms:write", notEndUser: true },
  { method: "PUT", path: "/api/rooms/{id}/keys", need: "rooms:write", body: () => ({ epoch: 1, sealed: {} }) },
  { method: "GET", path: "/api/rooms/{id}/keys", need: "rooms:read" },
  { method: "POST", path: "/api/rooms/{id}/messages", need: "rooms:write", body: () => ({ body: "hi" }) },
  { method: "GET", path: "/api/rooms/{id}/messages", need: "rooms:read" },
  { method: "GET", path: "/api/rooms/{id}/stream", need: "rooms:read" },
  { method: "PUT", path: "/api/me/keys", need: "rooms:write", body: () => ({ x25519: "A".repeat(43) }) },
  { method: "GET", path: "/api/users/{id}/keys", need: "rooms:read" },
  { method: "GET", path: "/api/actors/{kind}/{id}/timeline", need: "actors:read" },
  { method: "POST", path: "/api/actors/{kind}/{id}/revive", need: "settings:write" },
];

/** Codes that mean "refused by authentication or authorization". */
const AUTH_REFUSALS = new Set(["UNAUTHENTICATED", "INVALID_CREDENTIAL", "WRONG_CREDENTIAL_PLANE", "FORBIDDEN", "SESSION_REQUIRED", "TOTP_ENROLLMENT_REQUIRED"]);
const refused = (r: { status: number; body: any }) => (r.status === 401 || r.status === 403) && AUTH_REFUSALS.has(r.body?.error_code);

// Destructive calls on ids aimed at throw-away rows, so a row's own test cannot break another's.
function pathFor(row: Row, ids: Ids): string {
  const destructive = row.method !== "GET";
  return row.path
    .replace("/users/{id}", `/users/${destructive ? ids.random : ids.userId}`)
    .replace("/machines/{id}", `/machines/${destructive ? ids.random : ids.machineId}`)
    .replace("/sites/{id}", `/sites/${destructive ? ids.random : ids.siteId}`)
    .replace("/recordings/{id}", `/recordings/${ids.random}`)
    .replace("/sessions/{id}/recordings", `/sessions/${ids.random}/recordings`)
    .replace("/tokens/{id}", `/tokens/${ids.random}`)
    .replace("/rooms/{id}", `/rooms/${ids.random}`)
    .replace("{member}", ids.random)
    .replace("/actors/{kind}/{id}", `/actors/machine/${ids.random}`)
    .replace("/sessions/{id}", `/sessions/${ids.random}`)
    .replace("{code}", "000000")
    .replace("{token_id}", ids.random)
    .replace("{machine_id}", ids.random)
    .replace("{key_id}", ids.random);
}

for (const flavor of FLAVORS) {
  describe(`credential planes (${flavor})`, () => {
    let app: TestApp;
    let ids: Ids;
    const sessions: Record<string, string> = {};
    const accounts: Record<string, { username: string; password: string }> = {};
    let agentKey: string;
    let enrollmentKey: string;
    let scopedToken: string;
    let disabledToken: string;
    let otherTenantToken: string;

    beforeAll(async () => {
      app = await startTestApp(flavor);
      const site = await siteWithKey(app);
      enrollmentKey = site.key;
      const machine = await enrolledMachine(app, site);
      agentKey = machine.key;
      for (const role of ["admin", "technician", "auditor", "end_user"] as const) {
        const u = await app.user(role);
        sessions[role] = u.token;
        accounts[role] = u;
      }
      const eu = await app.call("GET", "/api/me", { token: sessions.end_user });
      const keys = await app.call("GET", `/api/machines/${machine.id}/keys`, { token: app.adminToken });
      const token = await app.call("POST", "/api/tokens", { token: app.adminToken, body: { name: "scoped", scopes: ["machines:read"], expires_at: new Date(Date.now() + 86_400_000).toISOString() } });
      scopedToken = token.body.token;
      ids = { userId: eu.body.id, machineId: machine.id, siteId: site.id, keyId: keys.body.keys[0].id, tokenId: token.body.id, random: crypto.randomUUID() };
      const disabled = await app.user("admin");
      disabledToken = disabled.token;
      expect((await app.call("PATCH", `/api/users/${disabled.id}`, { token: app.adminToken, body: { disabled: true } })).status).toBe(200);
      // A second tenant with its own admin.
      const other = crypto.randomUUID();
      await app.server.store.query("insert into tenants (id, name) values ($1, 'other')", [other]);
      await app.server.store.query("insert into tenant_settings (tenant_id) values ($1)", [other]);
      await createUser(app.server.store, other, { username: `other-admin-${Date.now()}`, role: "admin", password: "other-tenant-password" });
      const [u] = await app.server.store.query<{ username: string }>("select username from users where tenant_id = $1", [other]);
      otherTenantToken = await app.login(u!.username, "other-tenant-password");
    }, 60_000);
    afterAll(async () => app?.close());

    test("every /api route in the OpenAPI document has a row in this matrix", async () => {
      const spec = (await app.call("GET", "/api/openapi.json")).body;
      const documented = Object.entries(spec.paths as Record<string, Record<string, unknown>>)
        .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path.replace(/\{[^}]+\}/g, "{}")}`))
        .filter((r) => r.includes(" /api/") && !r.includes("/api/docs") && !r.includes("/api/openapi"));
      const covered = ROWS.map((r) => `${r.method} ${r.path.replace(/\{[^}]+\}/g, "{}")}`);
      expect(documented.filter((r) => !covered.includes(r))).toEqual([]);
    });

    test("no credential, another plane's credential, a forged one, or a disabled user's: 401 everywhere but the public routes", async () => {
      const bad: Array<[string, string | undefined, string]> = [
        ["none", undefined, "UNAUTHENTICATED"],
        ["agent key as bearer", agentKey, "WRONG_CREDENTIAL_PLANE"],
        ["enrollment key as bearer", enrollmentKey, "WRONG_CREDENTIAL_PLANE"],
        ["a JWT-looking string", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2ln", "INVALID_CREDENTIAL"],
        ["a well-formed session token nobody issued", `tss_${"ab".repeat(32)}`, "INVALID_CREDENTIAL"],
        ["a disabled admin's session", disabledToken, "INVALID_CREDENTIAL"],
      ];
      for (const row of ROWS.filter((r) => r.need !== "public")) {
        for (const [what, token, code] of bad) {
          const r = await app.call(row.method, pathFor(row, ids), { token, body: row.body?.(ids) });
          expect({ route: `${row.method} ${row.path}`, what, status: r.status, code: r.body?.error_code }).toEqual({ route: `${row.method} ${row.path}`, what, status: 401, code });
        }
      }
    });

    test("each role gets exactly what docs/PERMISSIONS.md gives it", async () => {
      const perms: Record<string, string[]> = {};
      for (const role of Object.keys(sessions)) perms[role] = (await app.call("GET", "/api/me", { token: sessions[role] })).body.permissions;
      for (const row of ROWS.filter((r) => r.need !== "public")) {
        for (const role of Object.keys(sessions)) {
          // Signing out ends the session, so it gets a session of its own.
          const token = row.path === "/api/auth/logout" ? await app.login(accounts[role]!.username, accounts[role]!.password) : sessions[role];
          const r = await app.call(row.method, pathFor(row, ids), { token, body: row.body?.(ids) });
          const allowed = (row.need === "self" || row.need === "self-session" ? true : row.need === "not-end-user-session" ? role !== "end_user" : perms[role]!.includes(row.need))
            && !(row.notEndUser && role === "end_user");
          expect({ route: `${row.method} ${row.path}`, role, refused: refused(r) }).toEqual({ route: `${row.method} ${row.path}`, role, refused: !allowed });
          if (!allowed) expect(r.status).toBe(403);
        }
      }
    });

    test("an API token acts within its scopes and cannot reach session-only routes", async () => {
      for (const row of ROWS.filter((r) => r.need !== "public")) {
        const r = await app.call(row.method, pathFor(row, ids), { token: scopedToken, body: row.body?.(ids) });
        const allowed = row.need === "self" || row.need === "machines:read";
        expect({ route: `${row.method} ${row.path}`, refused: refused(r) }).toEqual({ route: `${row.method} ${row.path}`, refused: !allowed });
        if (!allowed) expect(r.status).toBe(403);
      }
    });

    test("another tenant's admin sees none of this tenant's rows", async () => {
      for (const path of [`/api/users/${ids.userId}`, `/api/machines/${ids.machineId}`, `/api/sites/${ids.siteId}`, `/api/sites/${ids.siteId}/enrollment-key`, `/api/machines/${ids.machineId}/keys`]) {
        const r = await app.call("GET", path, { token: otherTenantToken });
        expect({ path, status: r.status }).toEqual({ path, status: 404 });
      }
      const users = await app.call("GET", "/api/users", { token: otherTenantToken });
      expect(users.body.users.map((u: any) => u.id)).not.toContain(ids.userId);
      expect((await app.call("GET", "/api/machines", { token: otherTenantToken })).body.machines).toEqual([]);
      expect((await app.call("GET", "/api/sites", { token: otherTenantToken })).body.sites).toEqual([]);
      expect((await app.call("POST", `/api/machines/${ids.machineId}/keys`, { token: otherTenantToken })).status).toBe(404);
      const grant = await app.call("POST", `/api/users/${ids.userId}/grants`, { token: otherTenantToken, body: { machine_id: ids.machineId } });
      expect(grant.status).toBe(404);
    });

    test("login-plane secrets are refused on the enrollment plane", async () => {
      const site = await siteWithKey(app);
      for (const key of [app.adminToken, scopedToken, agentKey]) {
        const r = await enroll(app, await enrollBody(site, { enrollment_key: key }));
        expect(r.status).toBe(401);
        expect(r.body.error_code).toBe("ENROLL_REJECTED");
      }
    });

    test("plane violations are audited", async () => {
      const rows = await app.server.store.query<{ n: number }>("select count(*)::int as n from audit_events where type = 'auth.plane_violation'");
      expect(Number(rows[0]!.n)).toBeGreaterThan(0);
    });
  });
}
