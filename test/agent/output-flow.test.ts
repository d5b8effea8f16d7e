import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import type { ChannelContext, End } from "../../src/agent/session/channel.ts";
import { CommandChannel } from "../../src/agent/session/command.ts";
import { OUTPUT_HARD_CAP, OUTPUT_HIGH_WATER } from "../../src/agent/session/flow.ts";
import { TerminalChannel } from "../../src/agent/session/terminal.ts";
import { payloadOf } from "../../src/protocol/frames.ts";

/**
 * Output flow control on the agent: a program faster than the agent's socket is paused (a
 * command's pipe is not read, a terminal gets XOFF) instead of filling the agent's memory, and
 * goes on once the socket drained.
 */
const dirs: string[] = [];
const stops: Array<() => void> = [];
afterEach(() => {
  for (const s of stops.splice(0)) s();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function context() {
  const home = mkdtempSync(join(tmpdir(), "tether-flow-"));
  dirs.push(home);
  const logLines: string[] = [];
  const state = { backlog: 0, bytes: 0, ended: null as End | null };
  const ctx: ChannelContext = {
    id: 3,
    exec: { shell: "/bin/sh", home, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: home, LANG: "C" } },
    log: pino({ level: "debug" }, { write: (s: string) => void logLines.push(s) }),
    frame: (f) => void (state.bytes += payloadOf(f).byteLength),
    send: () => {},
    backlog: () => state.backlog,
    end: (e) => void (state.ended = e),
  };
  return { ctx, state, logLines };
}

/** Output bytes received over `ms`. */
async function growth(state: { bytes: number }, ms: number): Promise<number> {
  const before = state.bytes;
  await Bun.sleep(ms);
  return state.bytes - before;
}

async function flowing(state: { bytes: number }): Promise<void> {
  const deadline = Date.now() + 5_000;
  while ((await growth(state, 100)) < 64 * 1024) if (Date.now() > deadline) throw new Error("no output flowing");
}

test("a command faster than the socket is not read past the high-water mark, and goes on once it drained", async () => {
  const { ctx, state } = context();
  const cmd = new CommandChannel(ctx, ["yes", "tether"]);
  stops.push(() => cmd.stop(undefined));
  await flowing(state);
  state.backlog = OUTPUT_HIGH_WATER + 1;
  await Bun.sleep(200); // what was read already goes out
  // Paused: at most one more chunk from each stream, whatever the command writes.
  expect(await growth(state, 500)).toBeLessThanOrEqual(2 * 256 * 1024);
  state.backlog = 0;
  await flowing(state);
});

test("a terminal faster than the socket gets XOFF past the high-water mark and XON once it drained", async () => {
  const { ctx, state } = context();
  const term = new TerminalChannel(ctx);
  stops.push(() => term.stop(undefined));
  term.input(new TextEncoder().encode("yes tether\n"));
  await flowing(state);
  state.backlog = OUTPUT_HIGH_WATER + 1;
  await Bun.sleep(300); // the PTY's buffer empties
  // Stopped by the line discipline: nothing more than a PTY buffer's worth.
  expect(await growth(state, 500)).toBeLessThanOrEqual(64 * 1024);
  state.backlog = 0;
  await flowing(state);
});

test("a terminal that turned XON/XOFF off loses output past the hard cap instead of filling memory, and says so", async () => {
  const { ctx, state, logLines } = context();
  const term = new TerminalChannel(ctx);
  stops.push(() => term.stop(undefined));
  term.input(new TextEncoder().encode("stty -ixon; yes tether\n"));
  await flowing(state);
  state.backlog = OUTPUT_HARD_CAP + 1;
  await Bun.sleep(100);
  expect(await growth(state, 300)).toBe(0);
  expect(logLines.some((l) => l.includes("term.output_dropped"))).toBe(true);
  state.backlog = 0;
  await flowing(state);
  expect(logLines.some((l) => l.includes("term.output_resumed"))).toBe(true);
});
