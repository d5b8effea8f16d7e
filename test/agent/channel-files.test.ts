import { afterEach, expect, spyOn, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { appendFileSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import * as fsp from "node:fs/promises";
import { join } from "node:path";
import { dataFrame } from "../../src/protocol/frames.ts";
import { channelId, harness, SESSION, start, type Harness } from "./session-harness.ts";

const live: Harness[] = [];
afterEach(async () => {
  for (const h of live.splice(0)) await h.cleanup();
});
const make = () => {
  const h = harness();
  live.push(h);
  return h;
};

test("download: a path that turns into a FIFO between the check and the open does not hang: ENOTFILE", async () => {
  const h = make();
  start(h);
  const fifo = join(h.home, "pipe");
  execFileSync("mkfifo", [fifo]);
  writeFileSync(join(h.home, "plain"), "x");
  const plain = statSync(join(h.home, "plain"));
  // The race: the check sees a regular file, the open meets the FIFO.
  const real = fsp.stat;
  const fake = async (p: unknown, o?: unknown) => (String(p) === fifo ? plain : real(p as string, o as never));
  const spy = spyOn(fsp, "stat").mockImplementation(fake as never);
  try {
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "download", path: fifo });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 3_000);
    expect(closed.error?.code).toBe("ENOTFILE");
  } finally {
    spy.mockRestore();
  }
});

test("malformed requests are refused with an error, never thrown: NUL bytes in paths, an empty argv[0]", async () => {
  const h = make();
  start(h);
  const opens = [
    { type: "list" as const, path: "a\0b" },
    { type: "download" as const, path: "a\0b" },
    { type: "upload" as const, path: "a\0b", size: 3 },
    { type: "cmd" as const, argv: [""] },
    { type: "cmd" as const, argv: ["ls\0x"] },
    { type: "cmd" as const, argv: ["ls"], cwd: "a\0b" },
  ];
  for (const o of opens) {
    const ch = channelId();
    h.host.handle({ t: "ch.open", session: SESSION, channel: ch, ...o });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 3_000);
    expect({ o, reason: closed.reason }).toEqual({ o, reason: "error" });
  }
});

test("upload to a file whose name is long but valid (250 bytes): the temp file name fits too, eof, no temp left", async () => {
  const h = make();
  start(h);
  const name = "é".repeat(100) + "x".repeat(50); // 250 bytes in UTF-8
  const ch = channelId();
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "upload", path: name, size: 3 });
  await h.waitMessage("ch.opened", (m) => m.channel === ch, 3_000);
  h.host.data(dataFrame(ch, "abc"));
  h.host.handle({ t: "ch.eof", channel: ch });
  const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 3_000);
  expect(closed).toMatchObject({ reason: "eof", bytes: 3 });
  expect(readFileSync(join(h.home, name), "utf8")).toBe("abc");
  expect(readdirSync(h.home).filter((f) => f.includes(".tether-upload-"))).toEqual([]);
});

test("upload onto a FIFO is refused (ENOTFILE) and leaves it a FIFO; one that becomes a FIFO before the rename too", async () => {
  const h = make();
  start(h);
  execFileSync("mkfifo", [join(h.home, "pipe")]);
  const ch = channelId();
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "upload", path: "pipe", size: 3 });
  expect(await h.waitMessage("ch.closed", (m) => m.channel === ch, 3_000)).toMatchObject({ reason: "error", error: { code: "ENOTFILE" } });
  expect(statSync(join(h.home, "pipe")).isFIFO()).toBe(true);

  // A regular target when the upload opens, a FIFO by the time it commits.
  writeFileSync(join(h.home, "later"), "old");
  const ch2 = channelId();
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch2, type: "upload", path: "later", size: 3 });
  await h.waitMessage("ch.opened", (m) => m.channel === ch2, 3_000);
  await fsp.unlink(join(h.home, "later"));
  execFileSync("mkfifo", [join(h.home, "later")]);
  h.host.data(dataFrame(ch2, "abc"));
  h.host.handle({ t: "ch.eof", channel: ch2 });
  expect(await h.waitMessage("ch.closed", (m) => m.channel === ch2, 3_000)).toMatchObject({ reason: "error", error: { code: "ENOTFILE" } });
  expect(statSync(join(h.home, "later")).isFIFO()).toBe(true);
  // The temp file goes once the channel has ended.
  const temps = () => readdirSync(h.home).filter((f) => f.includes(".tether-upload-"));
  for (let i = 0; i < 100 && temps().length > 0; i++) await Bun.sleep(20);
  expect(temps()).toEqual([]);
});

test("download of a file that grows while it is read ends at its size when opened; a /proc file (size 0) is read to its end", async () => {
  const h = make();
  start(h);
  const ackAll = (ch: number) => setInterval(() => h.host.handle({ t: "ch.ack", channel: ch, bytes: h.bytes(ch).byteLength }), 5);
  const path = join(h.home, "busy.log");
  const size = 2 * 1024 * 1024; // twice the window: the download waits for acks half-way
  writeFileSync(path, "x".repeat(size));
  const ch = channelId();
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "download", path });
  expect(await h.waitMessage("ch.opened", (m) => m.channel === ch, 3_000)).toMatchObject({ size });
  // Appended while the download waits: read to EOF, it would take this too (and, with a writer
  // faster than the link, never end).
  appendFileSync(path, "y".repeat(1024 * 1024));
  const acks = ackAll(ch);
  try {
    expect(await h.waitMessage("ch.closed", (m) => m.channel === ch, 10_000)).toMatchObject({ reason: "eof", bytes: size });
    expect(h.text(ch)).not.toContain("y");
  } finally {
    clearInterval(acks);
  }

  if (process.platform !== "linux") return;
  const proc = channelId();
  const procAcks = ackAll(proc);
  try {
    h.host.handle({ t: "ch.open", session: SESSION, channel: proc, type: "download", path: "/proc/self/status" });
    expect(await h.waitMessage("ch.opened", (m) => m.channel === proc, 3_000)).toMatchObject({ size: 0 });
    const closed = await h.waitMessage("ch.closed", (m) => m.channel === proc, 3_000);
    expect(closed).toMatchObject({ reason: "eof" });
    expect(h.text(proc)).toContain("Pid:");
  } finally {
    clearInterval(procAcks);
  }
});
