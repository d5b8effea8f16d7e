import { afterEach, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * Commands run in sessions of their own, so nothing but the agent stops them: when the agent is
 * SIGKILLed, the reaper (src/agent/session/reaper.ts) must. The session host runs in a process
 * of its own (fixtures/command-host.ts), killed for real.
 */
const FIXTURE = join(import.meta.dir, "fixtures", "command-host.ts");
const leftovers: number[] = [];
const dirs: string[] = [];
const hosts: Array<ReturnType<typeof Bun.spawn>> = [];
afterEach(() => {
  for (const p of hosts.splice(0)) p.kill("SIGKILL");
  for (const pid of leftovers.splice(0)) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {}
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const alive = (pid: number) => {
  try {
    return !/^\d+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
};

/**
 * Starts the host with commands that each write their pid (and a grandchild's) to files in a
 * temp dir. `path`: the PATH the host (and so its reaper and commands) runs with.
 */
async function host(commands: (dir: string) => string[][], opts: { extra?: string[]; path?: string } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "tether-reaper-"));
  dirs.push(dir);
  const env = { ...process.env, ...(opts.path ? { PATH: opts.path } : {}) };
  const proc = Bun.spawn([process.execPath, FIXTURE, JSON.stringify(commands(dir)), ...(opts.extra ?? [])], { stdout: "pipe", stderr: "inherit", env });
  hosts.push(proc);
  const reader = proc.stdout.getReader();
  let text = "";
  while (!/ready (\S+)/.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`command host exited: ${text}`);
    text += new TextDecoder().decode(value);
  }
  const reaperPid = Number(text.match(/ready (\S+)/)![1]);
  return { proc, dir, reaperPid };
}

async function pidIn(file: string): Promise<number> {
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline) {
    const s = existsSync(file) ? readFileSync(file, "utf8").trim() : "";
    if (/^\d+$/.test(s)) {
      leftovers.push(Number(s));
      return Number(s);
    }
    await Bun.sleep(20);
  }
  throw new Error(`no pid in ${file}`);
}

async function gone(pids: number[], ms: number): Promise<number[]> {
  const deadline = Date.now() + ms;
  while (pids.some(alive) && Date.now() < deadline) await Bun.sleep(50);
  return pids.filter(alive);
}

test.skipIf(process.platform !== "linux")("SIGKILLed agent: its running command, and what that started in its session, are stopped", async () => {
  const { proc, dir, reaperPid } = await host((d) => [
    // A command that never writes (so no broken pipe ends it), with a background child.
    ["sh", "-c", `echo $$ > ${d}/cmd; sleep 300 & echo $! > ${d}/child; wait`],
    // A grandchild that ignores SIGTERM: the SIGKILL stage must reach it.
    ["sh", "-c", `sh -c 'trap "" TERM; echo $$ > ${d}/stubborn; while :; do sleep 0.1; done' & wait`],
  ]);
  const pids = [await pidIn(join(dir, "cmd")), await pidIn(join(dir, "child")), await pidIn(join(dir, "stubborn"))];
  expect(alive(reaperPid)).toBe(true);
  proc.kill("SIGKILL");
  await proc.exited;
  expect(await gone(pids, 6_000)).toEqual([]);
  expect(await gone([reaperPid], 2_000)).toEqual([]);
});

test.skipIf(process.platform !== "linux")("without pkill (a slim container), the command's process group is stopped", async () => {
  // A PATH with what the commands and the reaper's script need, and no pkill.
  const bin = mkdtempSync(join(tmpdir(), "tether-reaper-bin-"));
  dirs.push(bin);
  for (const tool of ["sh", "sed", "sleep"]) symlinkSync(Bun.which(tool)!, join(bin, tool));
  const { proc, dir } = await host((d) => [["sh", "-c", `echo $$ > ${d}/cmd; sleep 300 & echo $! > ${d}/child; wait`]], { path: bin });
  const pids = [await pidIn(join(dir, "cmd")), await pidIn(join(dir, "child"))];
  proc.kill("SIGKILL");
  await proc.exited;
  expect(await gone(pids, 6_000)).toEqual([]);
});

test.skipIf(process.platform !== "linux")("a command that ended is released: the reaper of a SIGKILLed agent has nothing to stop, and exits at once", async () => {
  const { proc, dir, reaperPid } = await host((d) => [["sh", "-c", `echo $$ > ${d}/cmd`]], { extra: ["--ended"] });
  await pidIn(join(dir, "cmd"));
  proc.kill("SIGKILL");
  await proc.exited;
  // At once: with the command still listed it would wait out the grace period (2 s) first.
  expect(await gone([reaperPid], 1_000)).toEqual([]);
});
