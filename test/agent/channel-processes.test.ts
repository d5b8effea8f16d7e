import { afterEach, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { dataFrame } from "../../src/protocol/frames.ts";
import { channelId, harness, SESSION, start, type Harness } from "./session-harness.ts";

const live: Harness[] = [];
const pids: number[] = [];
afterEach(async () => {
  for (const pid of pids.splice(0)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
  for (const h of live.splice(0)) await h.cleanup();
});
const make = () => {
  const h = harness();
  live.push(h);
  return h;
};
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  // A zombie is not running; it is the parent's to reap.
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
};
/** Opens a command whose grandchild ignores SIGTERM (and keeps the pipes); returns the grandchild's pid. */
async function stubbornCommand(h: Harness, ch: number, pidFile: string): Promise<number> {
  // The outer sh dies on SIGTERM at once; the inner one ignores it and keeps the pipes.
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sh", "-c", `sh -c 'trap "" TERM; echo $$ > ${pidFile}; while :; do sleep 0.1; done' & wait`] });
  await h.waitMessage("ch.opened", (m) => m.channel === ch);
  return pidFrom(pidFile);
}
/** Waits (up to 4 s) for every pid to be gone; returns which are still alive. */
async function survivors(...ps: number[]): Promise<number[]> {
  const deadline = Date.now() + 4_000;
  while (ps.some(alive) && Date.now() < deadline) await Bun.sleep(50);
  return ps.filter(alive);
}
async function pidFrom(file: string, ms = 5_000): Promise<number> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (existsSync(file)) {
      const s = readFileSync(file, "utf8").trim();
      if (/^\d+$/.test(s)) {
        const pid = Number(s);
        pids.push(pid);
        return pid;
      }
    }
    await Bun.sleep(20);
  }
  throw new Error(`no pid in ${file}`);
}

test("cmd cancel: a grandchild that ignores SIGTERM is SIGKILLed even though the command itself exited on SIGTERM", async () => {
  const h = make();
  start(h);
  const ch = channelId();
  const gc = await stubbornCommand(h, ch, join(h.home, "gc.pid"));
  h.host.handle({ t: "ch.close", channel: ch });
  const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 6_000);
  expect(closed.reason).toBe("cancelled");
  expect(await survivors(gc)).toEqual([]);
});

test("session.stop: a command's grandchild that ignores SIGTERM does not outlive the session", async () => {
  const h = make();
  start(h);
  const ch = channelId();
  const gc = await stubbornCommand(h, ch, join(h.home, "gc2.pid"));
  h.host.handle({ t: "session.stop", session: SESSION, reason: "technician" });
  await h.waitMessage("ch.closed", (m) => m.channel === ch, 6_000);
  expect(await survivors(gc)).toEqual([]);
});

test("term close: a background job and a foreground job ignoring SIGHUP do not outlive the terminal", async () => {
  const h = make();
  start(h);
  const ch = channelId();
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "term", cols: 80, rows: 24 });
  await h.waitMessage("ch.opened", (m) => m.channel === ch);
  const bg = join(h.home, "bg.pid");
  const fg = join(h.home, "fg.pid");
  const type = (s: string) => h.host.data(dataFrame(ch, s));
  type(`sleep 1000 & echo $! > ${bg}\n`);
  const bgPid = await pidFrom(bg);
  type(`sh -c 'trap "" HUP; echo $$ > ${fg}; while :; do sleep 0.1; done'\n`);
  const fgPid = await pidFrom(fg);
  h.host.handle({ t: "ch.close", channel: ch });
  const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 6_000);
  expect(closed.reason).toBe("closed");
  expect(await survivors(bgPid, fgPid)).toEqual([]);
});

test("agent shutdown: once host.shutdown() resolves, a command's grandchild that ignores SIGTERM is gone", async () => {
  const h = make();
  start(h);
  const ch = channelId();
  const gc = await stubbornCommand(h, ch, join(h.home, "gc3.pid"));
  await h.host.shutdown(); // the agent process exits right after this
  await Bun.sleep(100); // the SIGKILL delivered, the process reaped by init
  expect(alive(gc)).toBe(false);
});
