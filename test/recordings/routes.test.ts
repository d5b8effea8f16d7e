import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createUser } from "../../src/auth/users.ts";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { silentLogger } from "../../src/log.ts";
import { parseCast, replayOutput } from "../../src/recordings/asciicast.ts";
import { encodeChunk } from "../../src/recordings/chunk-codec.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { insertMachine, insertSession, utf8 } from "./helpers.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

for (const flavor of FLAVORS) {
  describe(`recording routes (${flavor})`, () => {
    let app: TestApp;
    let machine: string;
    let session: string;
    const recs: string[] = [];
    const output: Record<string, string> = {};
    let other: { token: string; recording: string; session: string; machine: string };
    const tokens: Record<string, string> = {};

    beforeAll(async () => {
      app = await startTestApp(flavor);
      const store = app.server.store;
      machine = await insertMachine(store, { hostname: "web-01" });
      session = await insertSession(store, { machineId: machine });
      const recorder = new Recorder(store, silentLogger, { flushMs: 3_600_000 });
      for (const channel of [1, 2]) {
        const id = recorder.start({ tenantId: DEFAULT_TENANT_ID, sessionId: session, machineId: machine, channel, cols: 80, rows: 24, at: Date.now() - (3 - channel) * 1000 });
        recs.push(id);
        output[id] = `$ echo hello ${channel}\r\nhello ${channel} — ✓\r\n`;
        recorder.output(id, utf8(output[id]!));
        recorder.resize(id, 100, 30);
        await recorder.end(id);
      }
      await recorder.stop();

      // Another tenant, with a session and a recording of its own.
      const tenant = crypto.randomUUID();
      await store.query("insert into tenants (id, name) values ($1, 'other')", [tenant]);
      await store.query("insert into tenant_settings (tenant_id) values ($1)", [tenant]);
      const username = `rec-other-${Date.now()}`;
      await createUser(store, tenant, { username, role: "admin", password: "other-tenant-password" });
      const otherMachine = await insertMachine(store, { tenantId: tenant });
      const otherSession = await insertSession(store, { tenantId: tenant, machineId: otherMachine });
      const r2 = new Recorder(store, silentLogger, { flushMs: 3_600_000 });
      const otherRec = r2.start({ tenantId: tenant, sessionId: otherSession, machineId: otherMachine, channel: 1, cols: 80, rows: 24 });
      r2.output(otherRec, utf8("secret"));
      await r2.stop();
      other = { token: await app.login(username, "other-tenant-password"), recording: otherRec, session: otherSession, machine: otherMachine };
      for (const role of ["technician", "auditor", "end_user"] as const) tokens[role] = (await app.user(role)).token;
      tokens.admin = app.adminToken;
    }, 60_000);
    afterAll(async () => app?.close());

    test("a session's recordings, oldest first", async () => {
      const r = await app.call("GET", `/api/sessions/${session}/recordings`, { token: app.adminToken });
      expect(r.status).toBe(200);
      expect(r.body.recordings.map((x: any) => x.id)).toEqual(recs);
      const first = r.body.recordings[0];
      expect(Object.keys(first).sort()).toEqual(["bytes", "channel", "cols", "duration_s", "ended_at", "id", "machine_id", "rows", "session_id", "started_at"]);
      expect(first).toMatchObject({ session_id: session, machine_id: machine, channel: 1, cols: 80, rows: 24, bytes: utf8(output[recs[0]!]!).length });
      expect(first.duration_s).toBeGreaterThan(1);
      expect(first.ended_at).not.toBeNull();
    });

    test("a machine's recordings, newest first, in pages", async () => {
      const all = await app.call("GET", `/api/machines/${machine}/recordings`, { token: app.adminToken });
      expect(all.status).toBe(200);
      expect(all.body.recordings.map((x: any) => x.id)).toEqual([...recs].reverse());
      expect(all.body.next_cursor).toBeNull();
      const p1 = await app.call("GET", `/api/machines/${machine}/recordings?limit=1`, { token: app.adminToken });
      expect(p1.body.recordings.map((x: any) => x.id)).toEqual([recs[1]]);
      const p2 = await app.call("GET", `/api/machines/${machine}/recordings?limit=1&cursor=${p1.body.next_cursor}`, { token: app.adminToken });
      expect(p2.body.recordings.map((x: any) => x.id)).toEqual([recs[0]]);
      expect(p2.body.next_cursor).toBeNull();
      const bad = await app.call("GET", `/api/machines/${machine}/recordings?cursor=nonsense`, { token: app.adminToken });
      expect(bad.status).toBe(400);
      expect(bad.body.detail).toStartWith("query.cursor");
    });

    test("one recording", async () => {
      const r = await app.call("GET", `/api/recordings/${recs[1]}`, { token: app.adminToken });
      expect(r.status).toBe(200);
      expect(r.body).toMatchObject({ id: recs[1], channel: 2, session_id: session });
    });

    test("the cast: an asciicast v2 attachment that plays back the terminal's output; the export is audited", async () => {
      const res = await fetch(`${app.url}/api/recordings/${recs[0]}/cast`, { headers: { authorization: `Bearer ${app.adminToken}` } });
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toBe("application/x-asciicast");
      expect(res.headers.get("content-disposition")).toBe(`attachment; filename="${session}-1.cast"`);
      expect(res.headers.get("x-correlation-id")).toBeTruthy();
      const cast = parseCast(await res.text());
      expect(cast.header).toMatchObject({ version: 2, width: 80, height: 24, title: "web-01: terminal 1" });
      expect(typeof cast.header.timestamp).toBe("number");
      expect(replayOutput(cast)).toBe(output[recs[0]!]!);
      expect(cast.events.at(-1)).toEqual([expect.any(Number), "r", "100x30"]);
      const audit = await app.call("GET", "/api/audit?type=recording.exported", { token: app.adminToken });
      expect(audit.body.events[0]).toMatchObject({ type: "recording.exported", target_type: "recording", target_id: recs[0], details: { session_id: session, channel: 1 } });
    });

    test("a damaged chunk: the cast still plays the rest, with a marker where the chunk was", async () => {
      const id = crypto.randomUUID();
      const store = app.server.store;
      await store.query("insert into recordings (id, tenant_id, session_id, machine_id, channel, cols, rows, started_at) values ($1, $2, $3, $4, 9, 80, 24, now())", [id, DEFAULT_TENANT_ID, session, machine]);
      const parts = ["one\r\n", "two\r\n", "three\r\n"];
      for (const [i, text] of parts.entries()) {
        const data = i === 1 ? Bun.zstdCompressSync(utf8("\0TR1 not really")) : encodeChunk(utf8(text), [[i * 100, utf8(text).length]]).data;
        await store.query("insert into recording_chunks (recording_id, seq, data, last_ms) values ($1, $2, $3, $4)", [id, i + 1, data, i * 100]);
      }
      const res = await fetch(`${app.url}/api/recordings/${id}/cast`, { headers: { authorization: `Bearer ${app.adminToken}` } });
      expect(res.status).toBe(200);
      const cast = parseCast(await res.text());
      expect(replayOutput(cast)).toBe("one\r\nthree\r\n");
      expect(cast.events.map(([t, code]) => [t, code])).toEqual([[0, "o"], [0, "m"], [0.2, "o"]]);
      expect(cast.events[1]![2]).toContain("part 2");
    });

    test("unknown ids and another tenant's rows: 404; a malformed id: 400", async () => {
      const random = crypto.randomUUID();
      const cases: Array<[string, string, string]> = [
        [`/api/sessions/${random}/recordings`, app.adminToken, "SESSION_NOT_FOUND"],
        [`/api/machines/${random}/recordings`, app.adminToken, "MACHINE_NOT_FOUND"],
        [`/api/recordings/${random}`, app.adminToken, "RECORDING_NOT_FOUND"],
        [`/api/recordings/${random}/cast`, app.adminToken, "RECORDING_NOT_FOUND"],
        [`/api/sessions/${session}/recordings`, other.token, "SESSION_NOT_FOUND"],
        [`/api/machines/${machine}/recordings`, other.token, "MACHINE_NOT_FOUND"],
        [`/api/recordings/${recs[0]}`, other.token, "RECORDING_NOT_FOUND"],
        [`/api/recordings/${recs[0]}/cast`, other.token, "RECORDING_NOT_FOUND"],
        [`/api/recordings/${other.recording}`, app.adminToken, "RECORDING_NOT_FOUND"],
        [`/api/recordings/${other.recording}/cast`, app.adminToken, "RECORDING_NOT_FOUND"],
        [`/api/sessions/${other.session}/recordings`, app.adminToken, "SESSION_NOT_FOUND"],
        [`/api/machines/${other.machine}/recordings`, app.adminToken, "MACHINE_NOT_FOUND"],
      ];
      for (const [path, token, code] of cases) {
        const r = await app.call("GET", path, { token });
        expect({ path, status: r.status, code: r.body?.error_code }).toEqual({ path, status: 404, code });
      }
      // The other tenant sees its own.
      expect((await app.call("GET", `/api/recordings/${other.recording}`, { token: other.token })).status).toBe(200);
      const bad = await app.call("GET", "/api/recordings/not-a-uuid", { token: app.adminToken });
      expect(bad.status).toBe(400);
      expect(bad.body.error_code).toBe("VALIDATION_FAILED");
    });

    test("technicians and auditors may read recordings; end users may not", async () => {
      const paths = [`/api/sessions/${session}/recordings`, `/api/machines/${machine}/recordings`, `/api/recordings/${recs[0]}`, `/api/recordings/${recs[0]}/cast`];
      for (const path of paths) {
        for (const role of ["technician", "auditor"]) {
          const r = await app.call("GET", path, { token: tokens[role] });
          expect({ path, role, status: r.status }).toEqual({ path, role, status: 200 });
        }
        const r = await app.call("GET", path, { token: tokens.end_user });
        expect({ path, status: r.status, code: r.body?.error_code }).toEqual({ path, status: 403, code: "FORBIDDEN" });
        expect((await app.call("GET", path)).status).toBe(401);
      }
    });
  });
}
