import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import * as OTPAuth from "otpauth";
import { audit } from "../../src/audit/audit.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { ADMIN_PASSWORD, startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

const totpCode = (secret: string, at = Date.now()) =>
  new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), period: 30, digits: 6, algorithm: "SHA1" }).generate({ timestamp: at });
const inDays = (days: number) => new Date(Date.now() + days * 86_400_000).toISOString();

for (const flavor of FLAVORS) {
  describe(`audit log (${flavor})`, () => {
    let app: TestApp;
    /** Every secret the scenario handled; none may reach audit_events. */
    const secrets: string[] = [ADMIN_PASSWORD];
    const ids: Record<string, string> = {};
    let startedAt = "";

    // Each step comes "from" its own address, through 127.0.0.1 as a trusted proxy.
    const from = (ip: string) => ({ "x-forwarded-for": ip });
    const call = (method: string, path: string, token: string | undefined, body: unknown, ip: string) =>
      app.call(method, path, { token, body, headers: from(ip) });

    beforeAll(async () => {
      app = await startTestApp(flavor, { env: { TETHER_TRUSTED_PROXIES: "127.0.0.1" } });
      secrets.push(app.adminToken);
      startedAt = new Date(Date.now() - 1_000).toISOString();
      const admin = app.adminToken;
      const ok = (r: { status: number; body: any }, status: number) => {
        if (r.status !== status) throw new Error(`expected ${status}, got ${r.status}: ${JSON.stringify(r.body)}`);
        return r.body;
      };

      // Users: created, updated, disabled, password reset.
      const pw = { bob: "bob-first-password", carol: "carol-first-password", dave: "dave-first-password" };
      secrets.push(...Object.values(pw));
      ids.bob = ok(await call("POST", "/api/users", admin, { username: "bob", role: "technician", password: pw.bob }, "198.51.100.1"), 201).id;
      ids.carol = ok(await call("POST", "/api/users", admin, { username: "carol", role: "auditor", password: pw.carol }, "198.51.100.1"), 201).id;
      ids.dave = ok(await call("POST", "/api/users", admin, { username: "dave", role: "technician", password: pw.dave }, "198.51.100.1"), 201).id;
      ok(await call("PATCH", `/api/users/${ids.dave}`, admin, { role: "auditor" }, "198.51.100.2"), 200);

      // Logins: success, failure (wrong password: never recorded), lockout, logout.
      const bob = ok(await call("POST", "/api/auth/login", undefined, { username: "bob", password: pw.bob }, "198.51.100.10"), 200).token;
      secrets.push(bob, "bob-wrong-password");
      ok(await call("POST", "/api/auth/login", undefined, { username: "bob", password: "bob-wrong-password" }, "198.51.100.11"), 401);
      for (let i = 0; i < 10; i++) {
        secrets.push(`dave-guess-${i}-xyz`);
        await call("POST", "/api/auth/login", undefined, { username: "dave", password: `dave-guess-${i}-xyz` }, "198.51.100.12");
      }
      ok(await call("POST", "/api/auth/logout", bob, undefined, "198.51.100.13"), 204);

      // Second factor, password changes: secrets galore.
      const carol = ok(await call("POST", "/api/auth/login", undefined, { username: "carol", password: pw.carol }, "198.51.100.20"), 200).token;
      secrets.push(carol);
      const totp = ok(await call("POST", "/api/me/totp", carol, undefined, "198.51.100.20"), 200);
      secrets.push(totp.secret);
      const recovery = ok(await call("POST", "/api/me/totp/confirm", carol, { code: totpCode(totp.secret) }, "198.51.100.20"), 200).recovery_codes;
      secrets.push(...recovery);
      ok(await call("POST", "/api/me/password", carol, { current_password: pw.carol, new_password: "carol-second-password" }, "198.51.100.20"), 204);
      secrets.push("carol-second-password");
      ok(await call("POST", `/api/users/${ids.bob}/password`, admin, { password: "bob-reset-password" }, "198.51.100.3"), 204);
      secrets.push("bob-reset-password");
      ok(await call("PATCH", `/api/users/${ids.dave}`, admin, { disabled: true }, "198.51.100.2"), 200);

      // Tokens, minted and revoked; settings changed.
      const tok = ok(await call("POST", "/api/tokens", admin, { name: "ci", scopes: ["audit:read"], expires_at: inDays(7) }, "198.51.100.30"), 201);
      secrets.push(tok.token);
      ids.token = tok.id;
      ok(await call("GET", "/api/audit?limit=1", tok.token, undefined, "198.51.100.30"), 200);
      ok(await call("DELETE", `/api/tokens/${tok.id}`, admin, undefined, "198.51.100.31"), 204);
      ok(await call("PATCH", "/api/settings", admin, { require_totp_roles: ["admin"] }, "198.51.100.40"), 200);
      ok(await call("PATCH", "/api/settings", admin, { require_totp_roles: [] }, "198.51.100.40"), 403); // the admin is now restricted
      const adminTotp = ok(await call("POST", "/api/me/totp", admin, undefined, "198.51.100.40"), 200);
      secrets.push(adminTotp.secret);
      secrets.push(...ok(await call("POST", "/api/me/totp/confirm", admin, { code: totpCode(adminTotp.secret) }, "198.51.100.40"), 200).recovery_codes);

      // A credential of another plane presented to the API: refused and audited, not recorded.
      const agentKey = `cak_${"ab".repeat(32)}`;
      const enrollKey = `cek_${"cd".repeat(32)}`;
      secrets.push(agentKey, enrollKey);
      ok(await call("GET", "/api/me", agentKey, undefined, "198.51.100.50"), 401);
      ok(await call("GET", "/api/me", enrollKey, undefined, "198.51.100.50"), 401);
      ids.admin = ok(await app.call("GET", "/api/me", { token: admin }), 200).id;
    }, 60_000);
    afterAll(async () => app?.close());

    const events = async (query: string, token = app.adminToken) => {
      const r = await app.call("GET", `/api/audit?${query}`, { token });
      expect(r.status).toBe(200);
      return r.body.events as any[];
    };

    test("each security event is recorded with actor, target, ip and time", async () => {
      const one = async (query: string) => {
        const list = await events(query);
        expect(list.length).toBeGreaterThanOrEqual(1);
        const e = list[0];
        expect(Math.abs(Date.parse(e.at) - Date.now())).toBeLessThan(5 * 60_000);
        expect(e.id).toMatch(/^[0-9A-HJKMNP-TV-Z]{26}$/);
        return e;
      };
      const byAdmin = { actor_type: "user", actor_name: "admin" };

      expect(await one(`type=auth.login&outcome=success&target=${ids.bob}`)).toMatchObject({ actor_type: "user", actor_id: ids.bob, actor_name: "bob", target_type: "user", target_id: ids.bob, ip: "198.51.100.10" });
      expect(await one(`type=auth.login&outcome=failure&target=${ids.bob}`)).toMatchObject({ actor_type: "anonymous", actor_name: "bob", target_id: ids.bob, ip: "198.51.100.11", details: { reason: "bad_credentials" } });
      expect(await one("type=auth.lockout")).toMatchObject({ outcome: "failure", actor_type: "anonymous", actor_name: "dave", ip: "198.51.100.12", details: { by: "username" } });
      expect(await one("type=auth.logout")).toMatchObject({ actor_type: "user", actor_id: ids.bob, target_id: ids.bob, ip: "198.51.100.13" });
      expect(await one(`type=user.created&target=${ids.bob}`)).toMatchObject({ ...byAdmin, target_type: "user", ip: "198.51.100.1", details: { username: "bob", role: "technician" } });
      expect(await one(`type=user.updated&target=${ids.dave}`)).toMatchObject({ ...byAdmin, ip: "198.51.100.2", details: { role: { from: "technician", to: "auditor" } } });
      expect(await one(`type=user.disabled&target=${ids.dave}`)).toMatchObject({ ...byAdmin, ip: "198.51.100.2" });
      expect(await one(`type=user.password_reset&target=${ids.bob}`)).toMatchObject({ ...byAdmin, ip: "198.51.100.3" });
      expect(await one(`type=user.password_changed&target=${ids.carol}`)).toMatchObject({ actor_id: ids.carol, ip: "198.51.100.20" });
      expect(await one(`type=user.totp_enabled&target=${ids.carol}`)).toMatchObject({ actor_id: ids.carol, ip: "198.51.100.20" });
      expect(await one(`type=token.created&target=${ids.token}`)).toMatchObject({ ...byAdmin, target_type: "api_token", ip: "198.51.100.30", details: { scopes: ["audit:read"], name: "ci" } });
      expect(await one(`type=token.revoked&target=${ids.token}`)).toMatchObject({ ...byAdmin, target_type: "api_token", ip: "198.51.100.31" });
      expect(await one("type=settings.updated")).toMatchObject({ ...byAdmin, target_type: "tenant", target_id: DEFAULT_TENANT_ID, ip: "198.51.100.40", details: { require_totp_roles: { from: [], to: ["admin"] }, users_restricted: 1 } });
      expect(await one("type=auth.plane_violation")).toMatchObject({ outcome: "failure", ip: "198.51.100.50" });
    });

    test("no row of audit_events holds a password, a bearer secret, a TOTP secret or a recovery code", async () => {
      const rows = await app.server.store.query<{ j: string }>("select row_to_json(a)::text as j from audit_events a order by id");
      expect(rows.length).toBeGreaterThan(25);
      const text = rows.map((r) => r.j).join("\n");
      expect(secrets.length).toBeGreaterThan(40);
      for (const s of secrets) expect({ secret: s, found: text.includes(s) }).toEqual({ secret: s, found: false });
      // Nor anything of a secret's shape past its 8-character display prefix.
      expect(text).not.toMatch(/(tss|tpat|cak|cek)_[0-9a-f]{9,}/);
      // The hex part of a recovery code without its dash, too.
      for (const s of secrets.filter((x) => /^[0-9a-f]{5}-[0-9a-f]{5}$/.test(x))) expect(text).not.toContain(s.replace("-", ""));
    });

    test("filters: type, actor (id or name), target, outcome, from and to", async () => {
      const all = await events("limit=200");
      expect(all.length).toBeGreaterThan(25);
      for (let i = 1; i < all.length; i++) expect(all[i - 1].id > all[i].id).toBe(true);

      expect((await events("type=auth.logout")).every((e) => e.type === "auth.logout")).toBe(true);
      const byName = await events("actor=bob&limit=200");
      expect(byName.length).toBeGreaterThan(0);
      expect(byName.every((e) => e.actor_name === "bob" || e.actor_id === "bob")).toBe(true);
      const byId = await events(`actor=${ids.admin}&limit=200`);
      expect(byId.length).toBeGreaterThan(5);
      expect(byId.every((e) => e.actor_id === ids.admin)).toBe(true);
      expect((await events(`target=${ids.carol}&limit=200`)).every((e) => e.target_id === ids.carol)).toBe(true);
      const failures = await events("outcome=failure&limit=200");
      expect(failures.length).toBeGreaterThanOrEqual(12);
      expect(failures.every((e) => e.outcome === "failure")).toBe(true);

      expect(await events(`to=${encodeURIComponent(startedAt)}&type=token.created`)).toHaveLength(0);
      expect(await events(`from=${encodeURIComponent(startedAt)}&type=token.created`)).toHaveLength(1);
      expect(await events(`from=${encodeURIComponent(inDays(1))}`)).toHaveLength(0);
      const window = await events(`from=${encodeURIComponent(startedAt)}&to=${encodeURIComponent(inDays(1))}&limit=200`);
      expect(window.length).toBe(all.filter((e) => e.at >= startedAt).length);
    });

    test("cursor pagination: limit defaults to 50, at most 200, next_cursor until the end", async () => {
      for (let i = 0; i < 57; i++) {
        await audit(app.server.store, { tenantId: DEFAULT_TENANT_ID, type: "test.filler", actor: { type: "system" }, details: { i } });
      }
      const first = await app.call("GET", "/api/audit?type=test.filler", { token: app.adminToken });
      expect(first.body.events).toHaveLength(50);
      expect(first.body.next_cursor).toBe(first.body.events[49].id);
      const second = await app.call("GET", `/api/audit?type=test.filler&cursor=${first.body.next_cursor}`, { token: app.adminToken });
      expect(second.body.events).toHaveLength(7);
      expect(second.body.next_cursor).toBeNull();
      // Together, every row once. (Rows written in the same millisecond have ULIDs in no set order.)
      const both = [...first.body.events, ...second.body.events].map((e: any) => e.details.i).sort((a: number, b: number) => a - b);
      expect(both).toEqual(Array.from({ length: 57 }, (_, i) => i));

      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const r: any = await app.call("GET", `/api/audit?limit=20${cursor ? `&cursor=${cursor}` : ""}`, { token: app.adminToken });
        expect(r.body.events.length).toBeLessThanOrEqual(20);
        seen.push(...r.body.events.map((e: any) => e.id));
        cursor = r.body.next_cursor;
        pages++;
      } while (cursor && pages < 50);
      const all = await app.call("GET", "/api/audit?limit=200", { token: app.adminToken });
      expect(seen).toEqual(all.body.events.map((e: any) => e.id));
      expect(new Set(seen).size).toBe(seen.length);
    });

    test("bad queries are a 400 naming the field", async () => {
      for (const [query, field] of [
        ["limit=0", "query.limit"],
        ["limit=201", "query.limit"],
        ["limit=ten", "query.limit"],
        ["outcome=maybe", "query.outcome"],
        ["from=yesterday", "query.from"],
        ["to=2030-13-01T00:00:00Z", "query.to"],
        // ISO 8601 times PostgreSQL cannot take (no year 0; past 9999 in UTC): these were a 500.
        ["from=0000-01-01T00:00:00Z", "query.from"],
        ["to=9999-12-31T23:59:59-23:59", "query.to"],
        ["from=2030-01-02T00:00:00Z&to=2030-01-01T00:00:00Z", "query.to"],
        ["cursor=not-a-cursor", "query.cursor"],
      ]) {
        const r = await app.call("GET", `/api/audit?${query}`, { token: app.adminToken });
        expect({ query, status: r.status, code: r.body.error_code }).toEqual({ query, status: 400, code: "VALIDATION_FAILED" });
        expect(r.body.detail).toStartWith(field!);
      }
    });

    test("only admins and auditors read it; a token needs the audit:read scope", async () => {
      const auditor = await app.user("auditor");
      expect((await app.call("GET", "/api/audit", { token: auditor.token })).status).toBe(200);
      const tech = await app.user("technician");
      const denied = await app.call("GET", "/api/audit", { token: tech.token });
      expect(denied.status).toBe(403);
      expect(denied.body.detail).toContain("audit:read");
      const endUser = await app.user("end_user");
      expect((await app.call("GET", "/api/audit", { token: endUser.token })).status).toBe(403);
      const pat = (await app.call("POST", "/api/tokens", { token: auditor.token, body: { name: "x", scopes: ["users:read"], expires_at: inDays(1) } })).body.token;
      const scoped = await app.call("GET", "/api/audit", { token: pat });
      expect(scoped.status).toBe(403);
      expect(scoped.body.detail).toContain("audit:read scope");
      expect((await app.call("GET", "/api/audit")).status).toBe(401);
    }, 30_000);
  });
}
