import { afterAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ALLOCATOR_ENV, allocatorWarning, withAllocatorEnv } from "../../src/allocator.ts";
import { dbEnv, spawnServer } from "../helpers/process.ts";
import { createTestDb, eventually, type TestDb } from "../helpers/stores.ts";

/** The real process a new user starts: `npm start` runs src/main.ts. */
describe("server process", () => {
  const dbs: TestDb[] = [];
  afterAll(async () => {
    for (const db of dbs) await db.destroy();
  });

  test("prints its URL, answers health, readiness and metrics, and stops cleanly on SIGTERM", async () => {
    const db = await createTestDb("pglite");
    dbs.push(db);
    const server = await spawnServer("src/main.ts", { ...dbEnv(db.config), LOG_LEVEL: "info" });
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

    expect(await (await fetch(`${server.url}/healthz`)).json()).toEqual({ status: "ok" });
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: "ready", checks: { store: "ok", recovery: "done" }, failed_actors: [] });
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toContain("# TYPE tether_journal_commit_seconds histogram");
    expect(metrics).toContain("tether_journal_pending_events 0");

    // Errors come in the one envelope, with the correlation id echoed in a header.
    const missing = await fetch(`${server.url}/api/no/such/route`, { headers: { "x-correlation-id": "req-123" } });
    expect(missing.status).toBe(404);
    expect(missing.headers.get("x-correlation-id")).toBe("req-123");
    expect(await missing.json()).toEqual({ detail: "no route for GET /api/no/such/route", error_code: "NOT_FOUND", status_code: 404, correlation_id: "req-123" });

    // The correlation id is in the log line of that request too.
    await Bun.sleep(50);
    const access = server.lines.filter((l) => l.includes('"correlationId":"req-123"')).map((l) => JSON.parse(l));
    expect(access).toContainEqual(expect.objectContaining({ msg: "request", method: "GET", path: "/api/no/such/route", status: 404 }));

    const code = await server.kill("SIGTERM");
    expect(code).toBe(0);
    expect(server.lines.some((l) => l.includes("stopped cleanly"))).toBe(true);
    // Logs are JSON lines.
    const logLine = server.lines.find((l) => l.includes("actors recovered"))!;
    expect(JSON.parse(logLine)).toMatchObject({ level: 30, msg: "actors recovered", store: "pglite" });
  });

  test("first start creates admin with a password printed once; TETHER_ADMIN_PASSWORD chooses it instead", async () => {
    const db = await createTestDb("pglite");
    dbs.push(db);
    const env = { ...dbEnv(db.config), TETHER_ADMIN_PASSWORD: "" };
    let server = await spawnServer("src/main.ts", env);
    const line = await server.waitForLine(/as "admin" with password (\S+)/);
    const password = line.match(/with password (\S+)/)![1]!;
    const login = (pw: string) => fetch(`${server.url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "admin", password: pw }) });
    expect((await login(password)).status).toBe(200);
    // Never in the JSON log.
    expect(server.lines.filter((l) => l.startsWith("{")).some((l) => l.includes(password))).toBe(false);
    await server.kill("SIGTERM");
    // The second start creates nobody and prints no password.
    server = await spawnServer("src/main.ts", env);
    await Bun.sleep(200);
    expect(server.lines.some((l) => l.includes("with password"))).toBe(false);
    expect((await login(password)).status).toBe(200);
    await server.kill("SIGTERM");

    const chosen = await createTestDb("pglite");
    dbs.push(chosen);
    server = await spawnServer("src/main.ts", { ...dbEnv(chosen.config), TETHER_ADMIN_PASSWORD: "chosen-by-the-operator" });
    expect(server.lines.some((l) => l.includes("with password"))).toBe(false);
    expect((await login("chosen-by-the-operator")).status).toBe(200);
    await server.kill("SIGTERM");
  });

  test("a second server on the same data directory, or on the same port, exits with a clear error and changes nothing", async () => {
    const db = await createTestDb("pglite");
    dbs.push(db);
    const first = await spawnServer("src/main.ts", { ...dbEnv(db.config), TETHER_ADMIN_PASSWORD: "" });
    const password = (await first.waitForLine(/with password (\S+)/)).match(/with password (\S+)/)![1]!;
    const failure = (env: Record<string, string>) => spawnServer("src/main.ts", env, 30_000).then(() => "started", (err: Error) => err.message);

    // The same data directory (another port): refused before the database is opened.
    const sameDir = await failure(dbEnv(db.config));
    expect(sameDir).toContain("server exited (1)");
    expect(sameDir).toContain(`Tether could not start: the data directory ${db.config.dataDir} is in use by process ${first.proc.pid}`);

    // The same port (another data directory): refused, where Elysia's default (reusePort) would
    // have had the kernel split the connections between the two.
    const other = await createTestDb("pglite");
    dbs.push(other);
    const port = new URL(first.url).port;
    const samePort = await failure({ ...dbEnv(other.config), PORT: port, TETHER_ADMIN_PASSWORD: "" });
    expect(samePort).toContain(`Tether could not start: Failed to start server. Is port ${port} in use?`);
    // That start created no admin whose generated password nobody saw: the next one prints one.
    const later = await spawnServer("src/main.ts", { ...dbEnv(other.config), TETHER_ADMIN_PASSWORD: "" });
    await later.waitForLine(/as "admin" with password \S+/);
    await later.kill("SIGTERM");

    // The first server never noticed.
    const login = await fetch(`${first.url}/api/auth/login`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ username: "admin", password }) });
    expect(login.status).toBe(200);
    expect(await first.kill("SIGTERM")).toBe(0);
  });

  test("a failed actor is listed by /readyz and counted in /metrics, across a restart, while others keep working", async () => {
    const db = await createTestDb("pglite");
    dbs.push(db);
    const env = dbEnv(db.config);
    let server = await spawnServer("test/fixtures/counter-server.ts", env);
    const send = (id: string, body: unknown) =>
      fetch(`${server.url}/counter/${id}/event`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });

    expect((await send("ok", { type: "add", n: 5 })).status).toBe(200);
    // maxRestarts is 2 in the fixture: the third failure within the window stops the actor.
    for (let i = 0; i < 3; i++) {
      const res = await send("bad", { type: "boom" });
      expect([500, 503]).toContain(res.status);
      await Bun.sleep(60);
    }
    await eventually(async () => ((await (await fetch(`${server.url}/readyz`)).json()) as { failed_actors: unknown[] }).failed_actors.length === 1, 5_000, "the failure to be reported");
    const ready = (await (await fetch(`${server.url}/readyz`)).json()) as { status: string; failed_actors: Array<{ address: string; failure: string }> };
    expect(ready.status).toBe("ready");
    expect(ready.failed_actors[0]!.address).toBe("counter/bad");
    expect(ready.failed_actors[0]!.failure).toContain("boom on purpose");
    const refused = await send("bad", { type: "add", n: 1 });
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error_code: string }).error_code).toBe("ACTOR_FAILED");
    expect(await (await send("ok", { type: "add", n: 1 })).json()).toBe(6);
    expect(await (await fetch(`${server.url}/metrics`)).text()).toContain('tether_actors{kind="counter",state="failed"} 1');

    // Still failed after a restart: never silently reset.
    await server.kill("SIGKILL");
    server = await spawnServer("test/fixtures/counter-server.ts", env);
    const again = (await (await fetch(`${server.url}/readyz`)).json()) as { failed_actors: Array<{ address: string }> };
    expect(again.failed_actors.map((f) => f.address)).toEqual(["counter/bad"]);
    await server.kill("SIGTERM");
  });

  test("npm start starts the server with the allocator settings of src/allocator.ts, unless the environment has its own", () => {
    const start = (JSON.parse(readFileSync(resolve(import.meta.dir, "../../package.json"), "utf8")) as { scripts: { start: string } }).scripts.start;
    const settings = Object.entries(ALLOCATOR_ENV).map(([k, v]) => `${k}=\${${k}:-${v}}`).join(" ");
    expect(start.endsWith(`&& ${settings} bun src/main.ts`)).toBe(true);
  });

  test("this Bun's allocator reads the settings (an upgrade that renamed one would show here)", () => {
    const shown = Bun.spawnSync([process.execPath, "-e", "1"], { env: { ...process.env, ...ALLOCATOR_ENV, MIMALLOC_VERBOSE: "1" }, stderr: "pipe" });
    const options = new TextDecoder().decode(shown.stderr);
    expect(options).toMatch(new RegExp(`option 'purge_delay': ${ALLOCATOR_ENV.MIMALLOC_PURGE_DELAY}\\b`));
    expect(options).toMatch(new RegExp(`option 'purge_holes_min_interval': ${ALLOCATOR_ENV.MIMALLOC_PURGE_HOLES_MIN_INTERVAL}\\b`));
  });

  test("a server started without the allocator settings logs a warning; one started with them, or with an operator's own values, does not", async () => {
    expect(allocatorWarning(ALLOCATOR_ENV)).toBeNull();
    expect(allocatorWarning({ ...ALLOCATOR_ENV, MIMALLOC_PURGE_DELAY: "-1" })).toBeNull();
    expect(withAllocatorEnv({ MIMALLOC_PURGE_DELAY: "-1", MIMALLOC_PURGE_HOLES_MIN_INTERVAL: "" })).toMatchObject({ MIMALLOC_PURGE_DELAY: "-1", MIMALLOC_PURGE_HOLES_MIN_INTERVAL: "1000" });
    const db = await createTestDb("pglite");
    dbs.push(db);
    const warnings = async (env: Record<string, string>) => {
      const server = await spawnServer("src/main.ts", { ...dbEnv(db.config), ...env });
      await server.kill("SIGTERM");
      return server.lines.map((l) => (l.startsWith("{") ? (JSON.parse(l) as { level: number; msg?: string }) : null)).filter((l) => l?.msg?.includes("MIMALLOC_"));
    };
    const without = await warnings({ MIMALLOC_PURGE_DELAY: "", MIMALLOC_PURGE_HOLES_MIN_INTERVAL: "" });
    expect(without).toEqual([expect.objectContaining({ level: 40, msg: expect.stringContaining("started without MIMALLOC_PURGE_DELAY, MIMALLOC_PURGE_HOLES_MIN_INTERVAL") })]);
    expect(await warnings({})).toEqual([]);
  });
});
