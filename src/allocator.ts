import { readFileSync } from "node:fs";

/**
 * The settings of Bun's allocator (mimalloc) that the server runs with. mimalloc reads them
 * from the environment when the process starts, before any of our code runs, so they cannot be
 * set from here: `npm start` sets them (package.json; a value already in the environment wins),
 * and so do the processes the tests and benchmarks start. This module is their one source.
 *
 * Why: by default freed memory goes back to the OS within about 100 ms, and Bun allocates a
 * buffer for every WebSocket message it receives, so relaying bulk terminal output faulted the
 * same memory in again and again (docs/PERFORMANCE.md, Relay, has the measurements).
 */
export const ALLOCATOR_ENV = {
  /** ms before freed memory is given back to the OS (mimalloc's default: 100). */
  MIMALLOC_PURGE_DELAY: "10000",
  /** ms between discards of free blocks inside pages still in use, per thread (default 100). */
  MIMALLOC_PURGE_HOLES_MIN_INTERVAL: "1000",
} as const;

/** `env` with ALLOCATOR_ENV's values where it has none (an empty value counts as none), as `npm start` does it. */
export function withAllocatorEnv(env: Record<string, string | undefined> = process.env): Record<string, string | undefined> {
  const out = { ...env };
  for (const [k, v] of Object.entries(ALLOCATOR_ENV)) if (!out[k]) out[k] = v;
  return out;
}

/**
 * The environment the process started with, which is what the allocator read: on Linux from
 * /proc, because `process.env` also holds what Bun loaded from a `.env` file afterwards.
 */
function startEnv(): Record<string, string | undefined> {
  try {
    const entries = readFileSync("/proc/self/environ", "utf8").split("\0").filter(Boolean);
    return Object.fromEntries(entries.map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)]));
  } catch {
    return process.env;
  }
}

/** The warning to log when the process did not start with ALLOCATOR_ENV (null: it did, or an operator chose other values). */
export function allocatorWarning(env: Record<string, string | undefined> = startEnv()): string | null {
  const missing = Object.keys(ALLOCATOR_ENV).filter((k) => !env[k]); // empty counts as none, as in withAllocatorEnv
  if (missing.length === 0) return null;
  return `started without ${missing.join(", ")} (npm start sets ${Object.entries(ALLOCATOR_ENV).map(([k, v]) => `${k}=${v}`).join(" ")}): bulk terminal output relays slower (docs/OPERATIONS.md)`;
}
