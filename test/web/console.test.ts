import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { ADMIN_PASSWORD, startTestApp, type TestApp } from "../helpers/app.ts";
import { builtViewer, launchBrowser, screenshot } from "../helpers/browser.ts";
import { enroll, enrollBody, ed25519PublicKey, siteWithKey } from "../machines/fixtures.ts";
import { insertSession } from "../recordings/helpers.ts";
import { supportAgent } from "../helpers/support-client.ts";
import * as OTPAuth from "otpauth";
import { agentIdentity, TestAgentSocket } from "../helpers/agent-client.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { audit, flushAudit } from "../../src/audit/audit.ts";

/** The web viewer in a real headless chromium against a real server (W1, W5 security). */
describe("web console", () => {
  let app: TestApp;
  let browser: Browser;
  let context: BrowserContext;
  let page: Page;
  let siteId: string;
  let machineIds: string[] = [];
  const agents: Array<{ id: string; key: string; privateKey: CryptoKey }> = [];
  const errors: string[] = [];

  beforeAll(async () => {
    app = await startTestApp("pglite", { env: { TETHER_WEB_DIST: await builtViewer() } });
    const site = await siteWithKey(app);
    siteId = site.id;
    for (const host of ["web-01", "web-02", "db-01"]) {
      const id = await agentIdentity();
      const r = await enroll(app, await enrollBody(site, { hostname: host, public_key: id.publicKey }));
      expect([200, 201]).toContain(r.status);
      machineIds.push(r.body.machine_id);
      agents.push({ id: r.body.machine_id, key: r.body.key, privateKey: id.keys.privateKey });
    }
    browser = await launchBrowser();
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    page = await context.newPage();
    // Any CSP violation or script error on a page is a failure.
    // (The 401s of "who am I" before signing in and of the wrong password are expected.)
    page.on("console", (m) => m.type() === "error" && !/status of 401/.test(m.text()) && errors.push(m.text()));
    page.on("pageerror", (e) => errors.push(e.message));
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    await app?.close();
  });

  test("the page is served with a strict CSP and no inline script; assets are content-hashed and cached", async () => {
    const res = await fetch(app.url + "/");
    const csp = res.headers.get("content-security-policy")!;
    expect(csp).toContain("script-src 'self'");
    expect(csp.match(/script-src[^;]*/)![0]).not.toContain("unsafe-inline");
    expect(csp).not.toContain(" 'unsafe-eval'");
    expect(csp).toContain("frame-ancestors 'none'");
    const html = await res.text();
    expect(html).not.toMatch(/<script>(?!<\/script>)/);
    const asset = html.match(/src="(\/assets\/main-[a-z0-9]+\.js)"/)![1]!;
    const a = await fetch(app.url + asset);
    expect(a.status).toBe(200);
    expect(a.headers.get("cache-control")).toContain("immutable");
    expect((await fetch(app.url + "/api/nope")).status).toBe(404);
    expect((await fetch(app.url + "/assets/..%2Fschema.sql")).status).toBe(404);
  });

  test("a wrong password shows the error with its correlation id; the right one signs in with an HttpOnly cookie and nothing in localStorage", async () => {
    await page.goto(app.url + "/");
    await page.getByLabel("Username").fill("admin");
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").waitFor();
    expect(await page.getByRole("alert").textContent()).toMatch(/wrong username or password.*Correlation id/);
    await screenshot(page, "login-error");

    await page.getByLabel("Password").fill(ADMIN_PASSWORD);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Machines" }).waitFor();
    const cookies = await context.cookies();
    expect(cookies.find((c) => c.name === "tether_session")).toMatchObject({ httpOnly: true, sameSite: "Lax" });
    expect(await page.evaluate(() => JSON.stringify(localStorage))).toBe("{}");
  });

  test("the machines list shows every machine; the search box narrows it with the M5 syntax", async () => {
    await page.getByRole("table", { name: "Machines" }).waitFor();
    expect(await page.locator("tbody tr").count()).toBe(3);
    await screenshot(page, "machines");
    await page.getByLabel("Search machines").fill("host:web");
    await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 2);
    expect(await page.locator("tbody tr td:first-child").allTextContents()).toEqual(["web-01", "web-02"]);
    await page.getByLabel("Search machines").fill("nothing-matches-this");
    await page.getByText("No machine matches.").waitFor();
    await page.getByLabel("Search machines").fill("");
    await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 3);
  });

  test("presence updates without a reload: an agent connects and its row turns online, then offline", async () => {
    const row = page.locator(`tr[data-machine="${agents[2]!.id}"] .presence`);
    expect(await row.textContent()).toBe("offline");
    const socket = new TestAgentSocket(app.url);
    expect(await socket.handshake(agents[2]!.id, agents[2]!.key, agents[2]!.privateKey)).toBe(true);
    await page.waitForFunction((id) => document.querySelector(`tr[data-machine="${id}"] .presence`)?.textContent === "online", agents[2]!.id, { timeout: 10_000 });
    socket.close();
    await page.waitForFunction((id) => document.querySelector(`tr[data-machine="${id}"] .presence`)?.textContent === "offline", agents[2]!.id, { timeout: 10_000 });
  });

  test("at a phone's width the list still works", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.getByRole("table", { name: "Machines" }).waitFor();
    expect(await page.locator("tbody tr").count()).toBe(3);
    await screenshot(page, "machines-phone");
    await page.setViewportSize({ width: 1280, height: 800 });
    expect(errors).toEqual([]);
  });

  test("an admin rotates a site's enrollment key: the key and install command are shown once, and the new fingerprint is listed", async () => {
    await page.getByRole("link", { name: "Sites" }).click();
    await page.getByRole("table", { name: "Sites" }).waitFor();
    const row = page.locator("tr", { has: page.getByText(/^SITE-/) }).first();
    const before = await row.locator("td[data-fingerprint]").getAttribute("data-fingerprint");
    page.once("dialog", (d) => d.accept());
    await row.getByRole("button", { name: "Rotate key" }).click();
    const shown = page.getByRole("status", { name: "New enrollment key" });
    await shown.waitFor();
    const label = (await shown.locator("strong").textContent())!;
    expect(label).toMatch(/^v\d+ \([0-9A-F]{4}\)$/);
    expect(label).not.toBe(before);
    expect(await shown.locator("code").textContent()).toContain("cek_");
    await page.waitForFunction((l) => [...document.querySelectorAll("td[data-fingerprint]")].some((td) => td.getAttribute("data-fingerprint") === l), label);
    const api = (await app.call("GET", `/api/sites/${siteId}`, { token: app.adminToken })).body;
    expect(api.enrollment_key.fingerprint_label).toBe(label);
    await screenshot(page, "sites-rotated");
    await shown.getByRole("button", { name: "Done" }).click();
    expect(await shown.count()).toBe(0);
  });

  test("the audit log lists what just happened, filtered by type", async () => {
    await page.getByRole("link", { name: "Audit" }).click();
    await page.getByRole("table", { name: "Audit events" }).waitFor();
    await page.getByLabel("Event type").fill("enrollment_key.rotated");
    await page.getByLabel("Event type").press("Enter");
    await page.waitForFunction(() => [...document.querySelectorAll("tbody tr td:nth-child(2)")].every((td) => td.textContent!.startsWith("enrollment_key.rotated")) && document.querySelectorAll("tbody tr").length > 0);
    await screenshot(page, "audit");
  });

  test("a recording plays in asciinema-player (its own chunk), with speed, seek and the .cast download", async () => {
    const sessionId = await insertSession(app.server.store, { machineId: machineIds[0] });
    const recorder = app.server.relay.recorder!;
    const rec = recorder.start({ tenantId: DEFAULT_TENANT_ID, sessionId, machineId: machineIds[0]!, channel: 7, cols: 80, rows: 24 });
    recorder.output(rec, new TextEncoder().encode("$ echo recorded\r\nrecorded\r\n"));
    await Bun.sleep(300);
    recorder.output(rec, new TextEncoder().encode("$ exit\r\n"));
    recorder.end(rec);
    await (recorder as unknown as { flush(): Promise<void> }).flush();

    await page.goto(`${app.url}/recordings?session=${sessionId}`);
    await page.getByRole("table", { name: "Recordings" }).waitFor();
    const scriptsBefore = await page.evaluate(() => performance.getEntriesByType("resource").filter((r) => r.name.includes("/assets/")).length);
    await page.getByRole("link", { name: "Play" }).click();
    await page.locator(".player .ap-player, .player .ap-wrapper").first().waitFor({ timeout: 10_000 });
    // The player came in a chunk of its own, loaded only now.
    expect(await page.evaluate(() => performance.getEntriesByType("resource").filter((r) => r.name.includes("/assets/")).length)).toBeGreaterThan(scriptsBefore);
    await page.getByLabel("Speed").selectOption("4");
    await page.getByRole("button", { name: "Play from the start" }).click();
    await page.waitForFunction(() => (document.querySelector(".player")?.textContent ?? "").includes("recorded"), undefined, { timeout: 10_000 });
    await screenshot(page, "recording");
    const download = await fetch(`${app.url}/api/recordings/${rec}/cast`, { headers: { authorization: `Bearer ${app.adminToken}` } });
    expect((await download.text()).split("\n")[0]).toContain('"version":2');
    expect(await page.getByRole("link", { name: "Download .cast" }).getAttribute("href")).toBe(`/api/recordings/${rec}/cast`);
    expect(errors).toEqual([]);
  });

  test("support: a code and the person's command are shown; the page follows the person arriving and consenting", async () => {
    await page.getByRole("link", { name: "Support" }).click();
    await page.getByRole("button", { name: "Create a support code" }).click();
    const shown = (await page.getByLabel("Support code").textContent())!.replace(/\s/g, "");
    expect(shown).toMatch(/^\d{6}$/);
    expect(await page.locator(".code-card pre").textContent()).toContain(`--code ${shown}`);
    await page.getByRole("status", { name: "Session state" }).filter({ hasText: "Waiting for the person" }).waitFor();
    await screenshot(page, "support-waiting");
    const person = await supportAgent(app, shown);
    const start = await person.waitFor((m) => m.t === "session.start");
    await page.getByRole("status", { name: "Session state" }).filter({ hasText: "being asked" }).waitFor();
    person.send({ t: "consent", session: start.session, granted: true });
    await page.getByRole("status", { name: "Session state" }).filter({ hasText: "allowed" }).waitFor();
    expect(await page.getByRole("link", { name: "Open the session" }).getAttribute("href")).toBe(`/sessions/${start.session}`);
    await screenshot(page, "support-allowed");
    person.ws.close();
  });

  test("the actor timeline steps through an actor's history with the state and context diff at each step", async () => {
    // A machine that never connected has no history yet: the page says so, with the correlation id.
    await page.goto(`${app.url}/machines/${machineIds[0]}`);
    await page.getByRole("link", { name: "History" }).click();
    await page.getByRole("alert").filter({ hasText: "no journal" }).waitFor();
    // A room with a few events, picked by kind and id.
    const room = (await app.call("POST", "/api/rooms", { token: app.adminToken, body: { name: "timeline" } })).body.id;
    const u = await app.user("technician");
    await app.call("POST", `/api/rooms/${room}/members`, { token: app.adminToken, body: { user_id: u.id } });
    await app.call("DELETE", `/api/rooms/${room}/members/${u.id}`, { token: app.adminToken });
    await page.getByLabel("Kind").selectOption("room");
    await page.getByLabel("Actor id").fill(room);
    await page.getByRole("button", { name: "Show" }).click();
    await page.getByRole("list", { name: "Events" }).waitFor();
    const events = await page.getByRole("list", { name: "Events" }).locator("button").allTextContents();
    expect(events).toEqual(["#1 room.create", "#2 member.add", "#3 member.remove"]);
    expect(await page.locator("[aria-label=Step] h2").textContent()).toBe("#1 room.create");
    await page.getByRole("button", { name: "Next →" }).click();
    expect(await page.locator("[aria-label=Step] h2").textContent()).toBe("#2 member.add");
    const changed = await page.getByRole("table", { name: "Context changes" }).locator("tbody td:first-child").allTextContents();
    expect(changed.some((p) => p.includes(u.id))).toBe(true);
    await screenshot(page, "timeline");
    const t = await app.call("GET", `/api/actors/room/${room}/timeline`, { token: app.adminToken });
    expect(t.body.steps.map((s: any) => `#${s.seq} ${s.event}`)).toEqual(events);
    expect((await app.call("GET", `/api/actors/counter/${room}/timeline`, { token: app.adminToken })).status).toBe(404);
    expect((await app.call("GET", `/api/actors/room/${crypto.randomUUID()}/timeline`, { token: app.adminToken })).status).toBe(404);
  });

  test("a user with a second factor signs in with the password, then the code from their authenticator", async () => {
    const u = await app.user("technician");
    const secret = (await app.call("POST", "/api/me/totp", { token: u.token })).body.secret as string;
    const totp = new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), period: 30, digits: 6, algorithm: "SHA1" });
    expect((await app.call("POST", "/api/me/totp/confirm", { token: u.token, body: { code: totp.generate() } })).status).toBe(200);
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    await p.goto(app.url + "/");
    await p.getByLabel("Username").fill(u.username);
    await p.getByLabel("Password").fill(u.password);
    await p.getByRole("button", { name: "Sign in" }).click();
    await p.getByLabel(/Code from your authenticator/).waitFor();
    await screenshot(p, "login-totp");
    // The next period's code: the confirmation above used this period's, and a code works once.
    await p.getByLabel(/Code from your authenticator/).fill(totp.generate({ timestamp: Date.now() + 30_000 }));
    await p.getByRole("button", { name: "Verify" }).click();
    await p.getByRole("heading", { name: "Machines" }).waitFor();
    await ctx.close();
  });

  test("an end user sees only the machine granted to them, and no admin pages, recordings or history", async () => {
    /** A browser of its own, signed in as `u`, on the machines page. */
    const signedIn = async (u: { username: string; password: string }) => {
      const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const p = await ctx.newPage();
      await p.goto(app.url + "/");
      await p.getByLabel("Username").fill(u.username);
      await p.getByLabel("Password").fill(u.password);
      await p.getByRole("button", { name: "Sign in" }).click();
      await p.getByRole("table", { name: "Machines" }).waitFor();
      return { ctx, p };
    };
    /** The links of the granted machine's page header. */
    const machineLinks = async (p: Page) => {
      await p.goto(`${app.url}/machines/${machineIds[1]}`);
      await p.getByRole("heading", { name: "web-02" }).waitFor();
      const sub = p.locator("section.machine .page-head .sub");
      return { recordings: await sub.getByRole("link", { name: "Recordings" }).count(), history: await sub.getByRole("link", { name: "History" }).count() };
    };
    const u = await app.user("end_user");
    expect((await app.call("POST", `/api/users/${u.id}/grants`, { token: app.adminToken, body: { machine_id: machineIds[1] } })).status).toBe(201);
    const endUser = await signedIn(u);
    const p = endUser.p;
    expect(await p.locator("tbody tr td:first-child").allTextContents()).toEqual(["web-02"]);
    expect(await p.getByRole("link", { name: "Sites" }).count()).toBe(0);
    expect(await p.getByRole("link", { name: "Audit" }).count()).toBe(0);
    await screenshot(p, "end-user-portal");
    // Its page links neither to recordings nor to its history: an end user may read neither.
    expect(await machineLinks(p)).toEqual({ recordings: 0, history: 0 });
    await endUser.ctx.close();
    // An auditor's page of the same machine has both.
    const auditor = await signedIn(await app.user("auditor"));
    expect(await machineLinks(auditor.p)).toEqual({ recordings: 1, history: 1 });
    await auditor.ctx.close();
  });

  test("a page polling faster than the server answers still updates, with one request at a time", async () => {
    // Each answer about the support session takes 1.5 s; the page polls it every 1 s.
    let inFlight = 0;
    let most = 0;
    await page.route(/\/api\/sessions\/[0-9a-f-]{36}$/, async (route) => {
      most = Math.max(most, ++inFlight);
      try {
        await Bun.sleep(1_500);
        await route.continue().catch(() => {}); // unrouted meanwhile
      } finally {
        inFlight--;
      }
    });
    try {
      await page.goto(app.url + "/support");
      await page.getByRole("button", { name: "Create a support code" }).click();
      const shown = (await page.getByLabel("Support code").textContent())!.replace(/\s/g, "");
      const person = await supportAgent(app, shown);
      const start = await person.waitFor((m) => m.t === "session.start");
      await page.getByRole("status", { name: "Session state" }).filter({ hasText: "being asked" }).waitFor({ timeout: 10_000 });
      person.send({ t: "consent", session: start.session, granted: true });
      await page.getByRole("status", { name: "Session state" }).filter({ hasText: "allowed" }).waitFor({ timeout: 10_000 });
      expect(most).toBe(1);
      person.ws.close();
    } finally {
      await page.unroute(/\/api\/sessions\/[0-9a-f-]{36}$/);
    }
  });

  test("machines: a Load more overtaken by a filter change is dropped, and rows from Load more keep refreshing", async () => {
    errors.length = 0; // the timeline test's expected 404 is not ours
    // 150 machines enrolled before the three above: those three come with the second page.
    await app.server.store.query(
      `insert into machines (id, tenant_id, machine_uid, hostname, public_key, created_at)
       select gen_random_uuid(), $1, 'bulk-uid-' || g, 'bulk-' || lpad(g::text, 3, '0'), 'x', now() - interval '1 day' + g * interval '1 second'
         from generate_series(0, 149) g`,
      [DEFAULT_TENANT_ID],
    );
    // Requests for more than the first page (a Load more, or a refresh of more rows) answer slowly when asked.
    let slow = false;
    const list = /\/api\/machines\?/;
    await page.route(list, async (route) => {
      const url = new URL(route.request().url());
      if (slow && (url.searchParams.has("cursor") || Number(url.searchParams.get("limit")) > 100)) await Bun.sleep(2_000);
      await route.continue().catch(() => {}); // unrouted meanwhile
    });
    const hosts = () => page.locator("tbody tr td:first-child").allTextContents();
    try {
      await page.goto(app.url + "/");
      await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 100);

      // A slow Load more, then a new search before it answers: its rows do not join the new list.
      slow = true;
      await page.getByRole("button", { name: "Load more" }).click();
      await page.getByLabel("Search machines").fill("host:db");
      await page.waitForFunction(() => [...document.querySelectorAll("tbody tr td:first-child")].map((td) => td.textContent).join() === "db-01");
      await Bun.sleep(3_000);
      expect(await hosts()).toEqual(["db-01"]);
      slow = false;

      await page.getByLabel("Search machines").fill("");
      await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 100);
      await page.getByRole("button", { name: "Load more" }).click();
      await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 153);
      expect((await hosts()).slice(-3)).toEqual(["web-01", "web-02", "db-01"]);
      // web-02 came with Load more: its presence follows the agent all the same.
      const presence = (state: string) => page.waitForFunction(([id, s]) => document.querySelector(`tr[data-machine="${id}"] .presence`)?.textContent === s, [agents[1]!.id, state], { timeout: 10_000 });
      const socket = new TestAgentSocket(app.url);
      expect(await socket.handshake(agents[1]!.id, agents[1]!.key, agents[1]!.privateKey)).toBe(true);
      await presence("online");
      socket.close();
      await presence("offline");
      expect(errors).toEqual([]);
    } finally {
      await page.unroute(list);
    }
  });

  test("audit: an Older events overtaken by a filter change is dropped, and a double click asks for one page", async () => {
    errors.length = 0;
    // 150 events of one type (two pages of 100), three of another.
    for (let i = 0; i < 150; i++) await audit(app.server.store, { tenantId: DEFAULT_TENANT_ID, type: "test.bulk", actor: { type: "system", name: "bulk" }, details: { i } });
    for (let i = 0; i < 3; i++) await audit(app.server.store, { tenantId: DEFAULT_TENANT_ID, type: "test.other", actor: { type: "system", name: "other" }, details: { i } });
    await flushAudit(app.server.store);
    // Older pages (a cursor) answer slowly when asked.
    let slow = false;
    let olderAsked = 0;
    const log = /\/api\/audit\?/;
    await page.route(log, async (route) => {
      if (new URL(route.request().url()).searchParams.has("cursor")) {
        olderAsked++;
        if (slow) await Bun.sleep(2_000);
      }
      await route.continue().catch(() => {}); // unrouted meanwhile
    });
    const types = () => page.locator("tbody tr td:nth-child(2)").allTextContents();
    const only = (type: string, n: number) => page.waitForFunction(([t, n]) => {
      const cells = [...document.querySelectorAll("tbody tr td:nth-child(2)")].map((td) => td.textContent);
      return cells.length === n && cells.every((c) => c === t);
    }, [type, n] as const);
    const filter = async (type: string) => {
      await page.getByLabel("Event type").fill(type);
      await page.getByLabel("Event type").press("Enter");
    };
    try {
      await page.goto(app.url + "/audit");
      await page.getByRole("table", { name: "Audit events" }).waitFor();
      await filter("test.bulk");
      await only("test.bulk", 100);

      // A slow Older events, then a new filter before it answers: its rows do not join the new list.
      slow = true;
      await page.getByRole("button", { name: "Older events" }).click();
      await filter("test.other");
      await only("test.other", 3);
      await Bun.sleep(3_000);

      // A double click while the next page is on its way asks for it once, and appends it once.
      await filter("test.bulk");
      await only("test.bulk", 100);
      await Bun.sleep(2_500);
      olderAsked = 0;
      await page.getByRole("button", { name: "Older events" }).dblclick();
      await only("test.bulk", 150);
      await Bun.sleep(3_000);
      expect(await page.locator("tbody tr").count()).toBe(150);
      const shown = (await page.locator("tbody tr td:last-child").allTextContents()).map((d) => JSON.parse(d).i);
      expect(new Set(shown).size).toBe(150);
      expect(olderAsked).toBe(1);
      expect(await page.getByRole("button", { name: "Older events" }).count()).toBe(0);
      expect(errors).toEqual([]);
    } finally {
      await page.unroute(log);
    }
  });

  test("a machine's recordings past the first 100 come with Load more", async () => {
    const sessionId = await insertSession(app.server.store, { machineId: machineIds[2] });
    await app.server.store.query(
      `insert into recordings (id, tenant_id, session_id, machine_id, channel, cols, rows, started_at, ended_at)
       select gen_random_uuid(), $1, $2, $3, g, 80, 24, now() - g * interval '1 minute', now() - g * interval '1 minute' + interval '5 seconds'
         from generate_series(1, 105) g`,
      [DEFAULT_TENANT_ID, sessionId, machineIds[2]],
    );
    await page.goto(`${app.url}/recordings?machine=${machineIds[2]}`);
    await page.getByRole("table", { name: "Recordings" }).waitFor();
    expect(await page.locator("tbody tr").count()).toBe(100);
    await page.getByRole("button", { name: "Load more" }).click();
    await page.waitForFunction(() => document.querySelectorAll("tbody tr").length === 105);
    expect(await page.getByRole("button", { name: "Load more" }).count()).toBe(0);
  });

  test("changing the playback speed keeps the position", async () => {
    errors.length = 0; // the timeline test's expected 404 is not ours
    const sessionId = await insertSession(app.server.store, { machineId: machineIds[0] });
    const id = crypto.randomUUID();
    await app.server.store.query(
      "insert into recordings (id, tenant_id, session_id, machine_id, channel, cols, rows, started_at, ended_at) values ($1, $2, $3, $4, 1, 80, 24, now() - interval '1 minute', now())",
      [id, DEFAULT_TENANT_ID, sessionId, machineIds[0]],
    );
    // A 30-second cast, one line a second.
    const cast = [JSON.stringify({ version: 2, width: 80, height: 24 }), ...Array.from({ length: 30 }, (_, i) => JSON.stringify([i, "o", `line ${i}\r\n`]))].join("\n") + "\n";
    const castUrl = `**/api/recordings/${id}/cast`;
    await page.route(castUrl, (route) => route.fulfill({ status: 200, contentType: "application/x-asciicast", body: cast }));
    try {
      await page.goto(`${app.url}/recordings/${id}`);
      await page.locator(".player .ap-player, .player .ap-wrapper").first().waitFor({ timeout: 10_000 });
      await page.getByRole("button", { name: "Play from the start" }).click();
      await page.waitForFunction(() => (document.querySelector(".player")?.textContent ?? "").includes("line 3"), undefined, { timeout: 10_000 });
      await page.evaluate(() => document.querySelector(".player")!.firstElementChild!.setAttribute("data-old", ""));
      await page.getByLabel("Speed").selectOption("2");
      // A new player (the speed is an option of its own), at the time and frame where the old one was.
      await page.waitForFunction(() => {
        const p = document.querySelector(".player")!;
        return p.querySelector("[data-old]") === null && /^00:0[3-9]$/.test(p.querySelector(".ap-time-elapsed")?.textContent ?? "") && (p.textContent ?? "").includes("line 3");
      }, undefined, { timeout: 10_000 });
      // Again, before playing on: still there.
      await page.evaluate(() => document.querySelector(".player")!.firstElementChild!.setAttribute("data-old", ""));
      await page.getByLabel("Speed").selectOption("4");
      await page.waitForFunction(() => {
        const p = document.querySelector(".player")!;
        return p.querySelector("[data-old]") === null && /^00:0[3-9]$/.test(p.querySelector(".ap-time-elapsed")?.textContent ?? "") && (p.textContent ?? "").includes("line 3");
      }, undefined, { timeout: 10_000 });
      expect(errors).toEqual([]);
    } finally {
      await page.unroute(castUrl);
    }
  });

  test("a refused role change (the last admin) is shown, and the role stays", async () => {
    await page.goto(app.url + "/users");
    const role = page.getByLabel("Role of admin", { exact: true });
    await role.waitFor();
    await role.selectOption("technician");
    await page.getByRole("alert").filter({ hasText: "last active admin" }).waitFor();
    expect(await page.getByRole("alert").textContent()).toContain("Correlation id");
    expect(await role.inputValue()).toBe("admin");
    expect((await app.call("GET", "/api/me", { token: app.adminToken })).body.role).toBe("admin");
  });

  test("a login that policy restricts (second factor required, none yet) sets one up, then gets the console", async () => {
    const u = await app.user("auditor");
    expect((await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: ["auditor"] } })).status).toBe(200);
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const p = await ctx.newPage();
      const pageErrors: string[] = [];
      p.on("pageerror", (e) => pageErrors.push(e.message));
      await p.goto(app.url + "/");
      await p.getByLabel("Username").fill(u.username);
      await p.getByLabel("Password").fill(u.password);
      await p.getByRole("button", { name: "Sign in" }).click();
      await p.getByRole("heading", { name: "Set up a second factor" }).waitFor();
      expect(await p.getByRole("link", { name: "Audit" }).count()).toBe(0);
      await p.getByRole("button", { name: "Set up the authenticator" }).click();
      const secret = (await p.getByLabel("Secret", { exact: true }).textContent())!;
      expect(await p.getByLabel("otpauth URI").textContent()).toStartWith("otpauth://totp/");
      await screenshot(p, "enroll-totp");
      const totp = new OTPAuth.TOTP({ secret: OTPAuth.Secret.fromBase32(secret), period: 30, digits: 6, algorithm: "SHA1" });
      await p.getByLabel(/Code from your authenticator/).fill(totp.generate());
      await p.getByRole("button", { name: "Confirm" }).click();
      expect((await p.getByLabel("Recovery codes").textContent())!.trim().split("\n").length).toBeGreaterThan(0);
      await p.getByRole("button", { name: "Continue" }).click();
      await p.getByRole("heading", { name: "Machines" }).waitFor();
      await p.getByRole("link", { name: "Audit" }).waitFor();
      expect(pageErrors).toEqual([]);
    } finally {
      await ctx.close();
      await app.call("PATCH", "/api/settings", { token: app.adminToken, body: { require_totp_roles: [] } });
    }
  });
});
