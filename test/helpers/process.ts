import { resolve } from "node:path";
import type { Subprocess } from "bun";
import { withAllocatorEnv } from "../../src/allocator.ts";
import { readLines } from "./lines.ts";

const ROOT = resolve(import.meta.dir, "..", "..");
const BUN = process.execPath;

/** A real server process on a loopback port, with its output collected line by line. */
export interface ServerProcess {
  url: string;
  proc: Subprocess<"ignore", "pipe", "pipe">;
  lines: string[];
  waitForLine(pattern: RegExp, timeoutMs?: number): Promise<string>;
  kill(signal?: NodeJS.Signals): Promise<number>;
}

/**
 * `ready`: the line that says where it listens (a primary's by default; a standby prints another).
 * The process gets the allocator settings of `npm start` unless the environment has its own.
 */
export async function spawnServer(script: string, env: Record<string, string>, timeoutMs = 30_000, ready = /listening on (http:\/\/\S+)/): Promise<ServerProcess> {
  const proc = Bun.spawn([BUN, resolve(ROOT, script)], {
    cwd: ROOT,
    env: { ...withAllocatorEnv(), HOST: "127.0.0.1", PORT: "0", LOG_LEVEL: "warn", ...env },
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  const lines: string[] = [];
  const waiters: Array<() => void> = [];
  readLines([proc.stdout, proc.stderr], (line) => {
    lines.push(line);
    for (const w of waiters.splice(0)) w();
  });
  const waitForLine = async (pattern: RegExp, ms = timeoutMs) => {
    const deadline = Date.now() + ms;
    for (let seen = 0; ; ) {
      for (; seen < lines.length; seen++) if (pattern.test(lines[seen]!)) return lines[seen]!;
      if (proc.exitCode !== null) throw new Error(`server exited (${proc.exitCode}) before printing ${pattern}:\n${lines.join("\n")}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${pattern}:\n${lines.join("\n")}`);
      await Promise.race([new Promise<void>((r) => waiters.push(r)), Bun.sleep(Math.min(left, 100))]);
    }
  };
  const line = await waitForLine(ready);
  const url = line.match(ready)![1]!.replace(/:$/, "").replace("localhost", "127.0.0.1");
  return {
    url,
    proc,
    lines,
    waitForLine,
    kill: async (signal = "SIGKILL") => {
      proc.kill(signal);
      return await proc.exited;
    },
  };
}

/** The environment that points a server process at a TestDb. */
export function dbEnv(config: { databaseUrl?: string; dataDir: string; searchPath?: string }): Record<string, string> {
  if (!config.databaseUrl) return { TETHER_DATA_DIR: config.dataDir, DATABASE_URL: "" };
  const url = new URL(config.databaseUrl);
  if (config.searchPath) url.searchParams.set("search_path", config.searchPath);
  return { DATABASE_URL: url.toString() };
}

/** A JSON call to a server process: its status and parsed body (null if none), never throwing on a status. */
export async function callServer(url: string, method: string, path: string, token: string | null, body?: unknown, timeoutMs?: number) {
  const res = await fetch(url + path, {
    method,
    signal: timeoutMs ? AbortSignal.timeout(timeoutMs) : undefined,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: res.status, body: (await res.json().catch(() => null)) as any };
}
