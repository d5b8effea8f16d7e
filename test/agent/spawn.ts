import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Subprocess } from "bun";
import { expect } from "bun:test";
import { readLines } from "../helpers/lines.ts";

const ROOT = resolve(import.meta.dir, "..", "..");

/** A real agent process, its JSON log lines parsed as they come. */
export interface AgentProcess {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  stateDir: string;
  lines: string[];
  logs: any[];
  waitFor(pred: (entry: any) => boolean, timeoutMs?: number, what?: string): Promise<any>;
  stop(signal?: NodeJS.Signals): Promise<number>;
}

const running = new Set<Subprocess>();

/** Kills every agent still running (afterAll). */
export async function killAllAgents(): Promise<void> {
  for (const p of running) {
    p.kill("SIGKILL");
    await p.exited;
  }
  running.clear();
}

/** A temp state dir and a machine-id file of its own, so agents on one host are distinct machines. */
export function freshMachine(): { stateDir: string; machineIdFile: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), "tether-agent-test-"));
  const machineIdFile = join(dir, "machine-id");
  writeFileSync(machineIdFile, crypto.randomUUID().replaceAll("-", "") + "\n");
  return { stateDir: join(dir, "state"), machineIdFile, dir };
}

export function spawnAgent(args: string[], env: Record<string, string> = {}, stateDir = ""): AgentProcess {
  const proc = Bun.spawn([process.execPath, resolve(ROOT, "src/agent/main.ts"), ...args], {
    cwd: ROOT,
    env: { ...process.env, TETHER_AGENT_PRODUCT_UUID_FILE: "/nonexistent", TETHER_AGENT_LOG_LEVEL: "debug", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  running.add(proc);
  void proc.exited.then(() => running.delete(proc));
  const lines: string[] = [];
  const logs: any[] = [];
  const waiters: Array<() => void> = [];
  readLines([proc.stdout, proc.stderr], (line) => {
    lines.push(line);
    try {
      logs.push(JSON.parse(line));
    } catch {}
    for (const w of waiters.splice(0)) w();
  });
  const waitFor = async (pred: (e: any) => boolean, ms = 15_000, what = "log line") => {
    const deadline = Date.now() + ms;
    for (let seen = 0; ; ) {
      for (; seen < logs.length; seen++) if (pred(logs[seen])) return logs[seen];
      if (proc.exitCode !== null) throw new Error(`agent exited (${proc.exitCode}) before ${what}:\n${lines.join("\n")}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}:\n${lines.join("\n")}`);
      await Promise.race([new Promise<void>((r) => waiters.push(r)), Bun.sleep(Math.min(left, 100))]);
    }
  };
  return {
    proc,
    stateDir,
    lines,
    logs,
    waitFor,
    stop: async (signal = "SIGTERM") => {
      proc.kill(signal);
      const code = await Promise.race([proc.exited, Bun.sleep(10_000).then(() => "timeout" as const)]);
      if (code === "timeout") {
        proc.kill("SIGKILL");
        throw new Error(`agent did not exit within 10 s of ${signal}:\n${lines.join("\n")}`);
      }
      return code;
    },
  };
}

/** The arguments of a managed agent at `server` for `site`. */
export function managedArgs(server: string, site: { code: string; key: string }, stateDir: string, extra: string[] = []): string[] {
  return ["--server", server, "--site-code", site.code, "--enrollment-key", site.key, "--state-dir", stateDir, ...extra];
}

/** Short enrollment and reconnect timings for tests of a real agent against a real server. */
export const FAST_AGENT = ["--enroll-retry-ms", "300", "--enroll-short-retry-ms", "200", "--reconnect-base-ms", "100", "--reconnect-cap-ms", "500"];

/** An agent's output never holds a key: none of `secrets`, and nothing shaped like an agent or enrollment key. */
export function expectNoSecrets(lines: string[], secrets: string[]): void {
  const all = lines.join("\n");
  for (const s of secrets) expect(all.includes(s)).toBe(false);
  expect(all).not.toMatch(/(cak|cek)_[0-9a-f]{16,}/);
}
