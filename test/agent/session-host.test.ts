import { afterEach, describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { STDERR, STDOUT, channelOf, dataFrame, payloadOf } from "../../src/protocol/frames.ts";
import { FILE_CHUNK, TRANSFER_WINDOW } from "../../src/protocol/relay.ts";
import { defaultExecEnv, resolvePath } from "../../src/agent/session/channel.ts";
import { MAX_CHANNELS_PER_SESSION, MAX_SESSIONS } from "../../src/agent/session/host.ts";
import { decodeInbound, encodeOutbound } from "../../src/agent/session/wire.ts";
import { SESSION, SESSION2, channelId, harness, start, type Harness } from "./session-harness.ts";

/**
 * The agent's session host driven directly (no socket), with real PTYs, files and processes.
 * Every message it sends is checked against AgentToServer by the harness.
 */
const open: Harness[] = [];
function make(...args: Parameters<typeof harness>): Harness {
  const h = harness(...args);
  open.push(h);
  return h;
}
afterEach(async () => {
  for (const h of open.splice(0)) await h.cleanup();
});

const isRoot = process.getuid?.() === 0;
const random = (n: number) => {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65_536) crypto.getRandomValues(b.subarray(i, Math.min(n, i + 65_536)));
  return b;
};
const commandStreams = (h: Harness, channel: number) => {
  const out: Uint8Array[] = [];
  const err: Uint8Array[] = [];
  for (const f of h.frames.filter((f) => channelOf(f) === channel)) {
    const p = payloadOf(f);
    (p[0] === STDOUT ? out : p[0] === STDERR ? err : []).push(p.subarray(1));
  }
  return { stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
};

describe("terminals (real PTY)", () => {
  test("open, type, see the output; resize; exit code of the shell", async () => {
    const h = make();
    start(h);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "term", cols: 80, rows: 24 });
    await h.waitMessage("ch.opened", (m) => m.channel === ch);
    // `hel""lo`: the echoed input never contains "hello"; only the command's output does.
    h.host.data(dataFrame(ch, 'echo hel""lo\n'));
    await h.waitText(ch, /hello\r?\n/);
    h.host.handle({ t: "ch.resize", channel: ch, cols: 100, rows: 30 });
    h.host.data(dataFrame(ch, "stty size\n"));
    await h.waitText(ch, "30 100");
    h.host.data(dataFrame(ch, 'echo "T=$TERM P=$(pwd)"\n'));
    await h.waitText(ch, `T=xterm-256color P=${h.home}`);
    h.host.data(dataFrame(ch, "exit 7\n"));
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
    expect(closed).toMatchObject({ reason: "exit", exit_code: 7 });
    expect(h.host.channelIds()).toEqual([]);
  });

  test("ch.close hangs the shell up: ch.closed closed; several terminals at once; no TETHER_* in their environment", async () => {
    const h = make({}, { TETHER_AGENT_ENROLLMENT_KEY: "cek_secret_value" });
    start(h);
    const [a, b] = [channelId(), channelId()];
    for (const ch of [a, b]) h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "term", cols: 80, rows: 24 });
    await h.waitMessage("ch.opened", (m) => m.channel === b);
    h.host.data(dataFrame(a, 'echo "K=${TETHER_AGENT_ENROLLMENT_KEY-unset}"\n'));
    h.host.data(dataFrame(b, "echo B$((40+2))\n"));
    await h.waitText(a, "K=unset");
    await h.waitText(b, "B42");
    expect(h.text(a)).not.toContain("B42"); // each channel its own bytes
    const t0 = Date.now();
    h.host.handle({ t: "ch.close", channel: a });
    expect(await h.waitMessage("ch.closed", (m) => m.channel === a)).toMatchObject({ reason: "closed" });
    expect(Date.now() - t0).toBeLessThan(2_500);
    h.host.data(dataFrame(b, "echo still$((1+1))\n"));
    await h.waitText(b, "still2");
  });

  test("a shell that ignores SIGHUP is killed shortly after", async () => {
    const h = make();
    start(h);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "term", cols: 80, rows: 24 });
    await h.waitMessage("ch.opened", (m) => m.channel === ch);
    h.host.data(dataFrame(ch, "trap '' HUP; echo trap$((1))\n"));
    await h.waitText(ch, "trap1");
    h.host.handle({ t: "ch.close", channel: ch });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 5_000);
    expect(closed.reason).toBe("closed");
  });

  test("a shell that cannot start: ch.closed error, nothing opened", async () => {
    const h = make({ exec: { shell: "/nonexistent/shell", home: "/", env: {} } });
    start(h);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "term", cols: 80, rows: 24 });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
    expect(closed.reason).toBe("error");
    expect(closed.error?.code).toBe("ENOENT");
    expect(h.messages.some((m) => m.t === "ch.opened")).toBe(false);
  });
});

describe("files", () => {
  test("list a directory: names, types, sizes, mtimes, modes; then eof", async () => {
    const h = make();
    start(h);
    const dir = join(h.home, "docs");
    mkdirSync(join(dir, "sub"), { recursive: true });
    writeFileSync(join(dir, "a.txt"), "12345");
    chmodSync(join(dir, "a.txt"), 0o640);
    symlinkSync("a.txt", join(dir, "link"));
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "list", path: "~/docs" });
    const listing = await h.waitMessage("files.listing", (m) => m.channel === ch);
    expect(listing.path).toBe(dir);
    expect(listing.entries.map((e) => [e.name, e.type])).toEqual([["a.txt", "file"], ["link", "link"], ["sub", "dir"]]);
    const a = listing.entries[0]!;
    expect(a.size).toBe(5);
    expect(a.mode).toBe(0o640);
    expect(Math.abs(a.mtime - statSync(join(dir, "a.txt")).mtimeMs)).toBeLessThan(2);
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
    expect(closed.reason).toBe("eof");
    expect(h.messages.findIndex((m) => m.t === "files.listing")).toBeLessThan(h.messages.findIndex((m) => m.t === "ch.closed"));
  });

  test("list errors: ENOENT, ENOTDIR, EACCES", async () => {
    const h = make();
    start(h);
    writeFileSync(join(h.home, "plain"), "x");
    const cases: Array<[string, string]> = [[join(h.home, "missing"), "ENOENT"], [join(h.home, "plain"), "ENOTDIR"]];
    if (!isRoot) {
      mkdirSync(join(h.home, "locked"), { mode: 0o000 });
      cases.push([join(h.home, "locked"), "EACCES"]);
    }
    for (const [path, code] of cases) {
      const ch = channelId();
      h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "list", path });
      const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
      expect(closed.reason).toBe("error");
      expect(closed.error?.code).toBe(code);
    }
  });

  test("download: ch.opened {size}, chunks ≤ FILE_CHUNK, never more than the window unacknowledged, eof {bytes}; same bytes", async () => {
    const window = 256 * 1024;
    const h = make({ window });
    start(h);
    const content = random(1_000_000 + 123);
    writeFileSync(join(h.home, "big.bin"), content);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "download", path: join(h.home, "big.bin") });
    expect(await h.waitMessage("ch.opened", (m) => m.channel === ch)).toMatchObject({ size: content.byteLength });

    // Without acks it stops at exactly the window.
    const received = () => h.bytes(ch).byteLength;
    await Bun.sleep(200);
    expect(received()).toBe(window);
    for (const f of h.frames) expect(payloadOf(f).byteLength).toBeLessThanOrEqual(FILE_CHUNK);

    // Acking as a viewer would: at most `window` bytes in flight, all the way to eof.
    let acked = 0;
    while (!h.messages.some((m) => m.t === "ch.closed" && m.channel === ch)) {
      const got = received();
      expect(got - acked).toBeLessThanOrEqual(window);
      if (got > acked) {
        acked = got;
        h.host.handle({ t: "ch.ack", channel: ch, bytes: acked });
      }
      await Bun.sleep(5);
    }
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
    expect(closed).toMatchObject({ reason: "eof", bytes: content.byteLength });
    expect(Buffer.compare(h.bytes(ch), content)).toBe(0);
  });

  test("download cancelled: ch.closed cancelled; missing file ENOENT; a directory EISDIR", async () => {
    const h = make({ window: 64 * 1024 });
    start(h);
    writeFileSync(join(h.home, "f.bin"), random(500_000));
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "download", path: join(h.home, "f.bin") });
    await h.waitMessage("ch.opened", (m) => m.channel === ch);
    h.host.handle({ t: "ch.close", channel: ch });
    expect(await h.waitMessage("ch.closed", (m) => m.channel === ch)).toMatchObject({ reason: "cancelled" });
    for (const [path, code] of [[join(h.home, "nope"), "ENOENT"], [h.home, "EISDIR"]] as const) {
      const c = channelId();
      h.host.handle({ t: "ch.open", session: SESSION, channel: c, type: "download", path });
      const closed = await h.waitMessage("ch.closed", (m) => m.channel === c);
      expect(closed.error?.code).toBe(code);
    }
  });

  test("upload: acks at least every window/2, fsync + rename into place (0644), same bytes, no temp file left", async () => {
    const h = make();
    start(h);
    const content = random(TRANSFER_WINDOW * 2 + 777);
    const target = join(h.home, "up.bin");
    writeFileSync(target, "old contents");
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "upload", path: target, size: content.byteLength });
    await h.waitMessage("ch.opened", (m) => m.channel === ch);
    // Send like an uploader keeping TRANSFER_WINDOW in flight.
    let sent = 0;
    const lastAck = () => Math.max(0, ...h.messages.filter((m) => m.t === "ch.ack" && m.channel === ch).map((m) => (m as { bytes: number }).bytes));
    while (sent < content.byteLength) {
      while (sent - lastAck() >= TRANSFER_WINDOW) await h.waitMessage("ch.ack", (m) => m.channel === ch && m.bytes > sent - TRANSFER_WINDOW);
      const n = Math.min(FILE_CHUNK, content.byteLength - sent);
      h.host.data(dataFrame(ch, content.subarray(sent, sent + n)));
      sent += n;
    }
    expect(readFileSync(target, "utf8")).toBe("old contents"); // not in place before eof
    h.host.handle({ t: "ch.eof", channel: ch });
    expect(await h.waitMessage("ch.closed", (m) => m.channel === ch)).toMatchObject({ reason: "eof", bytes: content.byteLength });
    expect(Buffer.compare(readFileSync(target), content)).toBe(0);
    expect(statSync(target).mode & 0o777).toBe(0o644);
    expect(readdirSync(h.home)).toEqual(["up.bin"]);
    const acks = h.messages.filter((m) => m.t === "ch.ack").map((m) => (m as { bytes: number }).bytes);
    expect(acks.length).toBeGreaterThanOrEqual(3);
    expect(acks[0]!).toBeLessThanOrEqual(TRANSFER_WINDOW / 2 + FILE_CHUNK);
    for (let i = 1; i < acks.length; i++) expect(acks[i]! - acks[i - 1]!).toBeLessThanOrEqual(TRANSFER_WINDOW / 2 + FILE_CHUNK);
  });

  test("upload: more bytes than announced → too_large; fewer at eof → SIZE_MISMATCH; ch.close → cancelled; temp removed each time", async () => {
    const h = make();
    start(h);
    const target = join(h.home, "t.bin");
    const run = async (size: number, payload: number, then: "eof" | "close" | null) => {
      const ch = channelId();
      h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "upload", path: target, size });
      await h.waitMessage("ch.opened", (m) => m.channel === ch);
      h.host.data(dataFrame(ch, random(payload)));
      if (then === "eof") h.host.handle({ t: "ch.eof", channel: ch });
      if (then === "close") h.host.handle({ t: "ch.close", channel: ch });
      const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
      await Bun.sleep(50);
      expect(readdirSync(h.home)).toEqual([]);
      return closed;
    };
    expect((await run(10, 20, null)).reason).toBe("too_large");
    const mismatch = await run(10, 5, "eof");
    expect(mismatch.reason).toBe("error");
    expect(mismatch.error?.code).toBe("SIZE_MISMATCH");
    expect((await run(100, 5, "close")).reason).toBe("cancelled");
    expect(existsSync(target)).toBe(false);
  });

  test("upload errors: missing directory ENOENT, a directory as target EISDIR, no permission EACCES", async () => {
    const h = make();
    start(h);
    const cases: Array<[string, string]> = [[join(h.home, "no", "such", "dir", "f"), "ENOENT"], [h.home, "EISDIR"]];
    if (isRoot) cases.push(["/sys/tether-upload-test", "EACCES"]);
    else {
      mkdirSync(join(h.home, "ro"), { mode: 0o555 });
      cases.push([join(h.home, "ro", "f"), "EACCES"]);
    }
    for (const [path, code] of cases) {
      const ch = channelId();
      h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "upload", path, size: 3 });
      const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
      expect(closed.reason).toBe("error");
      expect(closed.error?.code).toBe(code);
    }
  });
});

describe("commands", () => {
  test("argv without a shell: stdout and stderr apart, exit code", async () => {
    const h = make();
    start(h);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sh", "-c", "echo out; echo err >&2; exit 3"] });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
    expect(closed).toMatchObject({ reason: "exit", exit_code: 3 });
    expect(commandStreams(h, ch)).toEqual({ stdout: "out\n", stderr: "err\n" });
    expect(h.messages.findIndex((m) => m.t === "ch.opened")).toBeGreaterThanOrEqual(0);

    const c2 = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: c2, type: "cmd", argv: ["pwd"], cwd: "/tmp" });
    await h.waitMessage("ch.closed", (m) => m.channel === c2);
    expect(commandStreams(h, c2).stdout).toBe("/tmp\n");
    const c3 = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: c3, type: "cmd", argv: ["echo", "$HOME", "a b"] });
    await h.waitMessage("ch.closed", (m) => m.channel === c3);
    expect(commandStreams(h, c3).stdout).toBe("$HOME a b\n"); // no shell expanded anything
  });

  test("cancel: SIGTERM to the command and its children → cancelled, quickly", async () => {
    const h = make();
    start(h);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sh", "-c", "sleep 30; echo never"] });
    await h.waitMessage("ch.opened", (m) => m.channel === ch);
    await Bun.sleep(100);
    const t0 = Date.now();
    h.host.handle({ t: "ch.close", channel: ch });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 5_000);
    expect(closed.reason).toBe("cancelled");
    expect(closed.exit_code === null || typeof closed.exit_code === "number").toBe(true);
    expect(Date.now() - t0).toBeLessThan(1_500);
    expect(commandStreams(h, ch).stdout).toBe("");
  });

  test("a command that ignores SIGTERM is killed 2 s later", async () => {
    const h = make();
    start(h);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"] });
    await h.waitMessage("ch.opened", (m) => m.channel === ch);
    const deadline = Date.now() + 5_000;
    while (!commandStreams(h, ch).stdout.includes("ready") && Date.now() < deadline) await Bun.sleep(20);
    const t0 = Date.now();
    h.host.handle({ t: "ch.close", channel: ch });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 6_000);
    expect(closed.reason).toBe("cancelled");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_900);
  });

  test("spawn failures: ENOENT for a missing program or cwd", async () => {
    const h = make();
    start(h);
    for (const open of [{ argv: ["/nonexistent/program"] }, { argv: ["no-such-program-xyz"] }, { argv: ["ls"], cwd: "/nonexistent-dir" }]) {
      const ch = channelId();
      h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", ...open });
      const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
      expect(closed.reason).toBe("error");
      expect(closed.error?.code).toBe("ENOENT");
    }
    expect(h.messages.some((m) => m.t === "ch.opened")).toBe(false);
  });
});

describe("sessions", () => {
  test("consent denied: consent {granted: false}, no channel opens, nothing started", async () => {
    const h = make({ consent: async () => false });
    start(h, { consent: "required" });
    expect(await h.waitMessage("consent")).toEqual({ t: "consent", session: SESSION, granted: false });
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["touch", join(h.home, "pwned")] });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
    expect(closed.error?.code).toBe("NO_SESSION");
    await Bun.sleep(100);
    expect(existsSync(join(h.home, "pwned"))).toBe(false);
    expect(h.shown.some((s) => s.what === "started")).toBe(false);
  });

  test("consent pending: channels refused until it is granted; not_required asks nobody", async () => {
    let answer: (v: boolean) => void = () => {};
    const h = make({ consent: (req) => new Promise((r) => (answer = r)) });
    start(h, { consent: "required" });
    await Bun.sleep(20);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "list", path: h.home });
    expect((await h.waitMessage("ch.closed", (m) => m.channel === ch)).error?.code).toBe("NO_CONSENT");
    answer(true);
    expect(await h.waitMessage("consent")).toEqual({ t: "consent", session: SESSION, granted: true });
    expect(h.shown).toContainEqual({ what: "started", session: SESSION, a: "Alice Tech" });
    const c2 = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: c2, type: "list", path: h.home });
    expect((await h.waitMessage("ch.closed", (m) => m.channel === c2)).reason).toBe("eof");

    const h2 = make({ consent: async () => { throw new Error("must not be asked"); } });
    start(h2, { consent: "not_required" });
    await Bun.sleep(20);
    expect(h2.messages.filter((m) => m.t === "consent")).toEqual([]);
    expect(h2.host.sessionIds()).toEqual([SESSION]);
  });

  test("session.stop closes every channel of that session (session_ended), forgets it, and leaves other sessions alone", async () => {
    const h = make();
    start(h);
    start(h, { session: SESSION2 });
    const [t, c, other] = [channelId(), channelId(), channelId()];
    h.host.handle({ t: "ch.open", session: SESSION, channel: t, type: "term", cols: 80, rows: 24 });
    h.host.handle({ t: "ch.open", session: SESSION, channel: c, type: "cmd", argv: ["sleep", "30"] });
    h.host.handle({ t: "ch.open", session: SESSION2, channel: other, type: "cmd", argv: ["sleep", "30"] });
    await h.waitMessage("ch.opened", (m) => m.channel === other);
    h.host.handle({ t: "session.stop", session: SESSION, reason: "technician" });
    for (const ch of [t, c]) expect((await h.waitMessage("ch.closed", (m) => m.channel === ch, 5_000)).reason).toBe("session_ended");
    expect(h.host.sessionIds()).toEqual([SESSION2]);
    expect(h.host.channelIds()).toEqual([other]);
    expect(h.shown).toContainEqual({ what: "ended", session: SESSION, a: "technician" });
    const late = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: late, type: "list", path: "/" });
    expect((await h.waitMessage("ch.closed", (m) => m.channel === late)).error?.code).toBe("NO_SESSION");
  });

  test("notice and chat go to the person; the person's chat goes out", async () => {
    const h = make();
    start(h);
    h.host.handle({ t: "notice", session: SESSION, text: "Bob joined (view only)" });
    h.host.handle({ t: "chat", session: SESSION, from: "Alice Tech", text: "hi there" });
    expect(h.shown).toContainEqual({ what: "notice", session: SESSION, a: "Bob joined (view only)" });
    expect(h.shown).toContainEqual({ what: "chat", session: SESSION, a: "Alice Tech", b: "hi there" });
    expect(h.host.chat(SESSION, "hello back")).toBe(true);
    expect(h.messages).toContainEqual({ t: "chat", session: SESSION, text: "hello back" });
    expect(h.host.chat(SESSION2, "nobody")).toBe(false);
    expect(h.logLines.join("")).not.toContain("hi there");
    expect(h.logLines.join("")).not.toContain("hello back");
  });

  test("limits: channels per session and sessions per agent → LIMIT / refused", async () => {
    expect(MAX_CHANNELS_PER_SESSION).toBe(16);
    expect(MAX_SESSIONS).toBe(8);
    const h = make({ maxChannels: 2, maxSessions: 1 });
    start(h);
    const ids = [channelId(), channelId(), channelId()];
    for (const ch of ids) h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sleep", "30"] });
    const refused = await h.waitMessage("ch.closed", (m) => m.channel === ids[2]);
    expect(refused.error?.code).toBe("LIMIT");
    expect(h.host.channelIds(SESSION).sort()).toEqual(ids.slice(0, 2).sort());
    start(h, { session: SESSION2 });
    expect(await h.waitMessage("consent", (m) => m.session === SESSION2)).toMatchObject({ granted: false });
    expect(h.host.sessionIds()).toEqual([SESSION]);
  });

  test("disconnected past the grace period: channels and session closed, nothing sent meanwhile", async () => {
    const h = make({ graceMs: 300 });
    start(h);
    const [t, d] = [channelId(), channelId()];
    writeFileSync(join(h.home, "f"), random(300_000));
    h.host.handle({ t: "ch.open", session: SESSION, channel: t, type: "term", cols: 80, rows: 24 });
    h.host.handle({ t: "ch.open", session: SESSION, channel: d, type: "download", path: join(h.home, "f") });
    await h.waitMessage("ch.opened", (m) => m.channel === t);
    await h.waitMessage("ch.opened", (m) => m.channel === d);
    const before = h.messages.length;
    const framesBefore = h.frames.length;
    h.host.detach();
    expect(h.host.channelIds()).toEqual([t]); // the transfer ended at once (it cannot have a gap)
    const deadline = Date.now() + 5_000;
    while (h.host.sessionIds().length && Date.now() < deadline) await Bun.sleep(20);
    while (h.host.channelIds().length && Date.now() < deadline) await Bun.sleep(20);
    expect(h.host.sessionIds()).toEqual([]);
    expect(h.host.channelIds()).toEqual([]);
    expect(h.messages.length).toBe(before);
    expect(h.frames.length).toBe(framesBefore);
    expect(h.shown).toContainEqual({ what: "ended", session: SESSION, a: "agent_lost" });
    expect(h.logLines.some((l) => l.includes('"session.expired"'))).toBe(true);
  });

  test("reconnected within the grace period: those that ended meanwhile come as ch.closed, then session.resumed lists the live channels; the terminal still works", async () => {
    const h = make({ graceMs: 10_000 });
    start(h, { consent: "required" });
    await h.waitMessage("consent");
    const [t, c, d] = [channelId(), channelId(), channelId()];
    writeFileSync(join(h.home, "f"), random(300_000));
    h.host.handle({ t: "ch.open", session: SESSION, channel: t, type: "term", cols: 80, rows: 24 });
    h.host.handle({ t: "ch.open", session: SESSION, channel: c, type: "cmd", argv: ["sh", "-c", "sleep 0.3; exit 4"] });
    h.host.handle({ t: "ch.open", session: SESSION, channel: d, type: "download", path: join(h.home, "f") });
    for (const ch of [t, c, d]) await h.waitMessage("ch.opened", (m) => m.channel === ch);
    h.host.detach();
    await Bun.sleep(800); // the command exits meanwhile
    const seen = h.messages.length;
    h.host.attach(h.sender());
    start(h, { consent: "required", resume: true });
    const resumed = await h.waitMessage("session.resumed");
    expect(resumed).toEqual({ t: "session.resumed", session: SESSION, channels: [t] });
    const after = h.messages.slice(seen);
    // What ended meanwhile comes first: the server closes what session.resumed does not list.
    expect(after.map((m) => m.t)).toEqual(["ch.closed", "ch.closed", "session.resumed"]);
    expect(after.filter((m) => m.t === "ch.closed")).toEqual(expect.arrayContaining([
      expect.objectContaining({ channel: c, reason: "exit", exit_code: 4 }),
      expect.objectContaining({ channel: d, reason: "agent_lost" }),
    ]));
    expect(h.consents).toHaveLength(1); // not asked again
    h.host.data(dataFrame(t, "echo back$((2*3))\n"));
    await h.waitText(t, "back6");
  });

  test("a resume for a session this agent does not hold: session.resumed with no channels, then as new", async () => {
    const h = make();
    start(h, { resume: true, consent: "required" });
    expect(await h.waitMessage("session.resumed")).toEqual({ t: "session.resumed", session: SESSION, channels: [] });
    expect(await h.waitMessage("consent")).toMatchObject({ granted: true });
  });

  test("unknown channels, a duplicate ch.open, and messages for unknown sessions change nothing", async () => {
    const h = make();
    h.host.handle({ t: "ch.open", session: SESSION, channel: 5, type: "term", cols: 80, rows: 24 });
    expect((await h.waitMessage("ch.closed", (m) => m.channel === 5)).error?.code).toBe("NO_SESSION");
    h.host.data(dataFrame(999, "x"));
    h.host.handle({ t: "ch.resize", channel: 999, cols: 10, rows: 10 });
    h.host.handle({ t: "ch.ack", channel: 999, bytes: 10 });
    h.host.handle({ t: "ch.eof", channel: 999 });
    h.host.handle({ t: "ch.close", channel: 999 });
    h.host.handle({ t: "notice", session: SESSION2, text: "x" });
    start(h);
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sleep", "5"] });
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sleep", "5"] });
    await h.waitMessage("ch.opened", (m) => m.channel === ch);
    expect(h.messages.filter((m) => m.t === "ch.opened" && m.channel === ch)).toHaveLength(1);
    expect(h.shown.filter((s) => s.what === "notice")).toEqual([]);
  });

  test("logs name channels by type and path or argv[0]: never file contents, terminal bytes or full argv", async () => {
    const h = make();
    start(h);
    const secret = "SECRET-" + crypto.randomUUID();
    writeFileSync(join(h.home, "s.txt"), secret);
    const [t, d, c, u] = [channelId(), channelId(), channelId(), channelId()];
    h.host.handle({ t: "ch.open", session: SESSION, channel: t, type: "term", cols: 80, rows: 24 });
    await h.waitMessage("ch.opened", (m) => m.channel === t);
    h.host.data(dataFrame(t, `echo ${secret}-typed\n`));
    await h.waitText(t, `${secret}-typed`);
    h.host.handle({ t: "ch.open", session: SESSION, channel: d, type: "download", path: join(h.home, "s.txt") });
    await h.waitMessage("ch.closed", (m) => m.channel === d);
    h.host.handle({ t: "ch.open", session: SESSION, channel: c, type: "cmd", argv: ["echo", `${secret}-arg`] });
    await h.waitMessage("ch.closed", (m) => m.channel === c);
    h.host.handle({ t: "ch.open", session: SESSION, channel: u, type: "upload", path: join(h.home, "u.txt"), size: 20 });
    await h.waitMessage("ch.opened", (m) => m.channel === u);
    h.host.data(dataFrame(u, `${secret}`.slice(0, 20)));
    h.host.handle({ t: "ch.eof", channel: u });
    await h.waitMessage("ch.closed", (m) => m.channel === u);
    const logs = h.logLines.join("");
    expect(logs).not.toContain(secret.slice(0, 20));
    const opens = h.logLines.map((l) => JSON.parse(l)).filter((e) => e.event === "channel.open");
    expect(opens.map((e) => e.type)).toEqual(["term", "download", "cmd", "upload"]);
    expect(opens.find((e) => e.type === "cmd").argv0).toBe("echo");
    expect(opens.find((e) => e.type === "download").path).toBe(join(h.home, "s.txt"));
  });
});

describe("pieces", () => {
  test("paths: ~, relative and absolute; the exec environment drops TETHER_*", () => {
    const exec = defaultExecEnv({ HOME: "/tmp", SHELL: "/bin/sh", PATH: "/bin", TETHER_AGENT_ENROLLMENT_KEY: "cek_x", TETHER_X: "1" });
    expect(exec.home).toBe("/tmp");
    expect(exec.shell).toBe("/bin/sh");
    expect(Object.keys(exec.env).filter((k) => k.startsWith("TETHER"))).toEqual([]);
    expect(exec.env.TERM).toBe("xterm-256color");
    expect(resolvePath(exec, "~")).toBe("/tmp");
    expect(resolvePath(exec, "~/a/b")).toBe("/tmp/a/b");
    expect(resolvePath(exec, "rel")).toBe("/tmp/rel");
    expect(resolvePath(exec, "/etc/../etc/hosts")).toBe("/etc/hosts");
    expect(defaultExecEnv({ HOME: "/nonexistent-home", SHELL: "relative-sh" })).toMatchObject({ home: "/", shell: "/bin/sh" });
  });

  test("wire: data frames and session messages are told apart; junk is neither", () => {
    const f = dataFrame(7, "abc");
    expect(decodeInbound(f)).toEqual({ kind: "data", frame: f });
    const m = encodeOutbound({ t: "ch.opened", channel: 7 });
    expect(decodeInbound(m)).toBeNull(); // an agent → server message is not a server → agent one
    const { Packr } = require("msgpackr");
    const ok = new Packr({ useRecords: false }).pack({ t: "ch.close", channel: 7 });
    expect(decodeInbound(ok)).toEqual({ kind: "message", message: { t: "ch.close", channel: 7 } });
    expect(decodeInbound(new Uint8Array([1, 2, 3]))).toBeNull();
  });
});
