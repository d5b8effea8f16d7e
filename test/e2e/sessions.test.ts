import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { STDERR, STDOUT } from "../../src/protocol/frames.ts";
import { FILE_CHUNK, TRANSFER_WINDOW } from "../../src/protocol/relay.ts";
import { E2e, runName, shellReady } from "../helpers/e2e.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import type { TestViewer } from "../helpers/viewer-client.ts";

/**
 * Issue 5, requirement 9, with real processes on loopback: a server (`src/main.ts`), a managed
 * agent (`src/agent/main.ts`) with a real PTY, and viewers on /ws/viewer. One session lives
 * through the steps, which build on each other and run in order within a flavor: a terminal
 * (typed input, resize, a view-only viewer refused), a file uploaded, listed and downloaded
 * again within the transfer window, a command with separate streams and its exit code, the
 * terminal's recording played back, and the session's events.
 */
const ADMIN_PASSWORD = "e2e sessions correct horse battery";

/** getRandomValues fills at most 64 KiB at a time. */
function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i += 65_536) crypto.getRandomValues(out.subarray(i, Math.min(n, i + 65_536)));
  return out;
}

for (const flavor of FLAVORS) {
  describe(`sessions end to end (${flavor})`, () => {
    let e2e: E2e;
    let machineId = "";
    let sessionId = "";
    let control: TestViewer;
    let term = 0; // the terminal channel
    const timings: Record<string, number> = {};
    const run = runName("e2es");
    /** Where files are uploaded and where the view-only viewer's `touch` would land. */
    const work = mkdtempSync(join(tmpdir(), "tether-e2e-sessions-"));
    // Over the 1 MiB window both ways: the uploader and the downloader wait on acks.
    const payload = randomBytes(3 * 1024 * 1024 + 123);
    const uploadPath = join(work, "upload.bin");

    const api = (method: string, path: string, body?: unknown) => e2e.api(method, path, body);
    const viewer = (access: "control" | "view") => e2e.viewer(sessionId, access);

    /** Polls `check` every 10 ms (doing its side effects, e.g. acks) until it is true. */
    async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!check()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(control.messages.slice(-10))}`);
        await Bun.sleep(10);
      }
    }

    const closedOf = (v: TestViewer, channel: number, timeoutMs = 10_000) => v.waitFor((m) => m.t === "ch.closed" && m.channel === channel, timeoutMs, `ch.closed of ${channel}`);
    const opened = (v: TestViewer, req: string) => v.waitFor((m) => (m.t === "ch.opened" || m.t === "error") && m.req === req, 10_000, `ch.opened ${req}`);

    beforeAll(async () => {
      e2e = await E2e.create(flavor, { adminPassword: ADMIN_PASSWORD, env: { TETHER_HEARTBEAT_MS: "1000", TETHER_OFFLINE_AFTER_MS: "5000" } });
      e2e.dirs.push(work);
      await e2e.start();
      const site = await e2e.site(run);
      // /bin/sh, not the login shell of whoever runs the tests: no rc files, a plain prompt.
      machineId = (await e2e.enroll(site, [], { SHELL: "/bin/sh" })).id;
    }, 40_000);

    afterAll(async () => {
      await e2e?.cleanup();
      console.log(`[sessions e2e ${flavor}] timings (ms): ${JSON.stringify(timings)}`);
    });

    test("a terminal on the real agent: typed input runs in the shell and its output comes back", async () => {
      const t0 = Date.now();
      const created = await api("POST", "/api/sessions", { machine_id: machineId });
      expect(created.status).toBe(201);
      expect(created.body).toMatchObject({ kind: "unattended", consent: "not_required" });
      sessionId = created.body.id;
      await eventually(async () => (await api("GET", `/api/sessions/${sessionId}`)).body?.state === "active", 5_000, "session active");
      control = await viewer("control");
      control.send({ t: "term.open", req: "t1", cols: 80, rows: 24 });
      const open = await opened(control, "t1");
      expect(open).toMatchObject({ t: "ch.opened", type: "term" });
      term = open.channel;
      await shellReady(control, term);
      control.sendData(term, "echo hello\n");
      // The echo of the typed line is "echo hello"; the command's output is "hello" on a line of its own.
      await control.waitForText(term, "\nhello\r", 10_000);
      timings.terminalHello = Date.now() - t0;
    }, 20_000);

    test("a resize reaches the PTY: stty size shows the new rows and columns", async () => {
      control.send({ t: "term.resize", channel: term, cols: 100, rows: 30 });
      await Bun.sleep(100); // the relay keeps the order, but leave the PTY a moment before the shell reads
      control.sendData(term, "stty size\n");
      await control.waitForText(term, "30 100", 10_000);
    }, 15_000);

    test("a view-only viewer's input is refused and never reaches the shell", async () => {
      const watcher = await viewer("view");
      const refused = join(work, `viewer-${run}`);
      const allowed = join(work, `control-${run}`);
      watcher.sendData(term, `touch ${refused}\n`);
      expect(await watcher.waitFor((m) => m.t === "error", 5_000, "VIEW_ONLY")).toMatchObject({ code: "VIEW_ONLY" });
      control.sendData(term, `touch ${allowed}; echo touched-$((20+22))\n`);
      await control.waitForText(term, "touched-42", 10_000);
      await watcher.waitForText(term, "touched-42", 5_000); // the watcher sees the terminal all the same
      expect(existsSync(allowed)).toBe(true);
      expect(existsSync(refused)).toBe(false);
      expect(control.text(term)).not.toContain(`viewer-${run}`); // not even echoed by the shell
    }, 20_000);

    test("a file is uploaded within the window, listed, and downloaded again byte for byte", async () => {
      const t0 = Date.now();
      control.send({ t: "files.upload", req: "up", path: uploadPath, size: payload.byteLength });
      const up = await opened(control, "up");
      expect(up).toMatchObject({ t: "ch.opened", type: "upload" });
      const acked = () => Math.max(0, ...control.messages.filter((m) => m.t === "ch.ack" && m.channel === up.channel).map((m) => m.bytes as number));
      for (let sent = 0; sent < payload.byteLength; ) {
        const chunk = payload.subarray(sent, Math.min(sent + FILE_CHUNK, payload.byteLength));
        await until(() => sent + chunk.byteLength - acked() <= TRANSFER_WINDOW, 10_000, "an upload ack");
        control.sendData(up.channel, chunk);
        sent += chunk.byteLength;
      }
      control.send({ t: "ch.eof", channel: up.channel });
      expect(await closedOf(control, up.channel)).toMatchObject({ reason: "eof", bytes: payload.byteLength });
      timings.upload = Date.now() - t0;

      control.send({ t: "files.list", req: "ls", path: work });
      const listing = await control.waitFor((m) => m.t === "files.listing" && m.req === "ls", 10_000, "files.listing");
      expect(listing.path).toBe(work);
      expect(listing.entries.find((e: any) => e.name === "upload.bin")).toMatchObject({ type: "file", size: payload.byteLength });
      expect(listing.entries.some((e: any) => String(e.name).includes("tether-upload"))).toBe(false); // no temp file left
      await closedOf(control, listing.channel);

      const t1 = Date.now();
      control.send({ t: "files.download", req: "down", path: uploadPath });
      const down = await opened(control, "down");
      expect(down).toMatchObject({ t: "ch.opened", type: "download", size: payload.byteLength });
      const received = () => (control.data.get(down.channel) ?? []).reduce((n, c) => n + c.byteLength, 0);
      let ackedDown = 0;
      await until(() => {
        const n = received();
        if (n > ackedDown) control.send({ t: "ch.ack", channel: down.channel, bytes: (ackedDown = n) });
        return control.messages.some((m) => m.t === "ch.closed" && m.channel === down.channel);
      }, 15_000, "the download's end");
      expect(await closedOf(control, down.channel)).toMatchObject({ reason: "eof", bytes: payload.byteLength });
      const got = Buffer.concat(control.data.get(down.channel) ?? []);
      expect(got.byteLength).toBe(payload.byteLength);
      expect(got.equals(Buffer.from(payload))).toBe(true);
      timings.download = Date.now() - t1;
    }, 30_000);

    test("a command's stdout and stderr come apart, and its exit code is reported", async () => {
      control.send({ t: "cmd.run", req: "cmd", argv: ["sh", "-c", "echo out; echo err >&2; exit 3"] });
      const cmd = await opened(control, "cmd");
      expect(cmd).toMatchObject({ t: "ch.opened", type: "cmd" });
      expect(await closedOf(control, cmd.channel)).toMatchObject({ reason: "exit", exit_code: 3 });
      const stream = (s: number) => Buffer.concat((control.data.get(cmd.channel) ?? []).filter((p) => p[0] === s).map((p) => p.subarray(1))).toString();
      expect(stream(STDOUT)).toBe("out\n");
      expect(stream(STDERR)).toBe("err\n");
      expect((control.data.get(cmd.channel) ?? []).every((p) => p[0] === STDOUT || p[0] === STDERR)).toBe(true);
    }, 15_000);

    test("the terminal's recording plays back its output", async () => {
      control.sendData(term, "exit\n");
      expect(await closedOf(control, term)).toMatchObject({ reason: "exit", exit_code: 0 });
      let recs: any[] = [];
      await eventually(async () => (recs = (await api("GET", `/api/sessions/${sessionId}/recordings`)).body?.recordings ?? []).length === 1 && recs[0].ended_at !== null, 5_000, "the recording ended");
      const cast = await fetch(`${e2e.url}/api/recordings/${recs[0].id}/cast`, { headers: { authorization: `Bearer ${e2e.token}` } });
      expect(cast.status).toBe(200);
      const lines = (await cast.text()).trim().split("\n").map((l) => JSON.parse(l));
      expect(lines[0]).toMatchObject({ version: 2, width: 80, height: 24 });
      const output = lines.slice(1).filter((e) => e[1] === "o").map((e) => e[2]).join("");
      expect(output).toContain("\nhello\r");
      expect(output).toContain("30 100");
      expect(output).toContain("touched-42");
      expect(lines.slice(1).filter((e) => e[1] === "r").map((e) => e[2])).toEqual(["100x30"]);
      // What was played back is what the viewer was shown.
      expect(output).toBe(control.text(term));
    }, 15_000);

    test("the session's events record the transfers and the command", async () => {
      let events: any[] = [];
      const load = async (): Promise<any[]> => (events = (await api("GET", `/api/sessions/${sessionId}/events`)).body?.events ?? []);
      await eventually(async () => (await load()).filter((e) => e.type === "file.transferred").length === 2 && events.some((e) => e.type === "command.finished"), 5_000, "events");
      const transferred = events.filter((e) => e.type === "file.transferred");
      expect(transferred.map((e) => e.details)).toEqual([
        expect.objectContaining({ path: uploadPath, bytes: payload.byteLength, direction: "to_machine", reason: "eof" }),
        expect.objectContaining({ path: uploadPath, bytes: payload.byteLength, direction: "from_machine", reason: "eof" }),
      ]);
      expect(events.find((e) => e.type === "command.finished").details).toMatchObject({ exit_status: 3, reason: "exit", argv: ["sh", "-c", "echo out; echo err >&2; exit 3"] });
    }, 15_000);
  });
}
