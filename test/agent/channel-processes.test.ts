import { afterEach, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
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
  const pidFile = join(h.home, "gc.pid");
  // The outer sh dies on SIGTERM at once; the inner one ignores it and keeps the pipes.
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sh", "-c", `sh -c 'trap "" TERM; echo $$ > ${pidFile}; while :; do sleep 0.1; done' & wait`] });
  await h.waitMessage("ch.opened", (m) => m.channel === ch);
  const gc = await pidFrom(pidFile);
  h.host.handle({ t: "ch.close", channel: ch });
  const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 6_000);
  expect(closed.reason).toBe("cancelled");
  const deadline = Date.now() + 4_000;
  while (alive(gc) && Date.now() < deadline) await Bun.sleep(50);
  expect(alive(gc)).toBe(false);
});

test("session.stop: a command's grandchild that ignores SIGTERM does not outlive the session", async () => {
  const h = make();
  start(h);
  const ch = channelId();
  const pidFile = join(h.home, "gc2.pid");
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sh", "-c", `sh -c 'trap "" TERM; echo $$ > ${pidFile}; while :; do sleep 0.1; done' & wait`] });
  await h.waitMessage("ch.opened", (m) => m.channel === ch);
  const gc = await pidFrom(pidFile);
  h.host.handle({ t: "session.stop", session: SESSION, reason: "technician" });
  await h.waitMessage("ch.closed", (m) => m.channel === ch, 6_000);
  const deadline = Date.now() + 4_000;
  while (alive(gc) && Date.now() < deadline) await Bun.sleep(50);
  expect(alive(gc)).toBe(false);
});

test("term close: a background job and a foreground job ignoring SIGHUP do not outlive the terminal", async () => {
  const h = make();
  start(h);
  const ch = channelId();
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "term", cols: 80, rows: 24 });
  await h.waitMessage("ch.opened", (m) => m.channel === ch);
  const bg = join(h.home, "bg.pid");
  const fg = join(h.home, "fg.pid");
  const type = (s: string) => h.host.data(new Uint8Array([0, (ch >>> 24) & 255, (ch >>> 16) & 255, (ch >>> 8) & 255, ch & 255, ...new TextEncoder().encode(s)]));
  type(`sleep 1000 & echo $! > ${bg}\n`);
  const bgPid = await pidFrom(bg);
  type(`sh -c 'trap "" HUP; echo $$ > ${fg}; while :; do sleep 0.1; done'\n`);
  const fgPid = await pidFrom(fg);
  h.host.handle({ t: "ch.close", channel: ch });
  const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch, 6_000);
  expect(closed.reason).toBe("closed");
  const deadline = Date.now() + 4_000;
  while ((alive(bgPid) || alive(fgPid)) && Date.now() < deadline) await Bun.sleep(50);
  expect({ bg: alive(bgPid), fg: alive(fgPid) }).toEqual({ bg: false, fg: false });
});

test("agent shutdown: once host.shutdown() resolves, a command's grandchild that ignores SIGTERM is gone", async () => {
  const h = make();
  start(h);
  const ch = channelId();
  const pidFile = join(h.home, "gc3.pid");
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["sh", "-c", `sh -c 'trap "" TERM; echo $$ > ${pidFile}; while :; do sleep 0.1; done' & wait`] });
  await h.waitMessage("ch.opened", (m) => m.channel === ch);
  const gc = await pidFrom(pidFile);
  await h.host.shutdown(); // the agent process exits right after this
  await Bun.sleep(100); // the SIGKILL delivered, the process reaped by init
  expect(alive(gc)).toBe(false);
});
