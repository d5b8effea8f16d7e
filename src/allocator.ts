/**
 * The settings of Bun's allocator (mimalloc) that the server runs with. mimalloc reads them
 * from the environment when the process starts, before any of our code runs, so they cannot be
 * set from here: `npm start` sets them (package.json; a value already in the environment wins),
 * as do the processes the tests and benchmarks start. This module is their one source, and
 * `allocatorWarning` tells an operator who starts the server some other way.
 *
 * Why: by default mimalloc gives freed memory back to the OS within about 100 ms (and
 * discards free blocks inside pages still in use on every idle tick). Bun allocates a buffer
 * for every WebSocket message it receives, so a relay at hundreds of MiB/s kept faulting the
 * same memory in again: 200–300 minor page faults per MiB relayed, about 1 ms of CPU per MiB
 * on the benchmark machine, a third of what relaying costs (docs/PERFORMANCE.md, Relay). With
 * these settings freed memory stays 10 s before it goes back, and free blocks inside pages in
 * use are discarded at most once a second: 7–44 faults per MiB. The resident memory of an idle
 * server is the same once those 10 s have passed (bench/agents.ts waits for them).
 */
export const ALLOCATOR_ENV = {
  /** ms before freed memory is given back to the OS (mimalloc's default: 100). */
  MIMALLOC_PURGE_DELAY: "10000",
  /** ms between discards of free blocks inside pages still in use, per thread (default 100). */
  MIMALLOC_PURGE_HOLES_MIN_INTERVAL: "1000",
} as const;

/** The warning to log when this process did not start with ALLOCATOR_ENV (null: it did, or an operator chose other values). */
export function allocatorWarning(env: Record<string, string | undefined> = process.env): string | null {
  const missing = Object.keys(ALLOCATOR_ENV).filter((k) => env[k] === undefined || env[k] === "");
  if (missing.length === 0) return null;
  return `started without ${missing.join(", ")} (npm start sets ${Object.entries(ALLOCATOR_ENV).map(([k, v]) => `${k}=${v}`).join(" ")}): bulk terminal output relays slower (docs/OPERATIONS.md)`;
}
