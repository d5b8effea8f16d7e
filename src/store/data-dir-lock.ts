import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from "node:fs";
import { resolve } from "node:path";
import { EWOULDBLOCK, libc, LOCK_EX, LOCK_NB } from "../libc.ts";

/**
 * One process per embedded data directory. PGlite has no lock of its own, so two servers
 * started on the same directory (a second `npm start` by mistake, or `npm run replay` while the
 * server runs) would both open it and corrupt it. A process that opens it therefore holds an
 * exclusive `flock` on `tether.pid` in the directory for as long as its store is open. The
 * kernel drops the lock when the process dies, however it dies (kill -9, a crash), so nothing
 * is ever stale, and it holds across containers that share the volume, where pids mean nothing.
 * The file also names the holder's pid, for the error message only, and stays when the lock
 * goes: its presence means nothing.
 *
 * Where libc cannot be loaded (bun:ffi), the directory is opened without the lock.
 */
export const LOCK_FILE = "tether.pid";

export class DataDirInUseError extends Error {
  constructor(
    readonly dataDir: string,
    readonly holder: string,
  ) {
    super(`the data directory ${dataDir} is in use by ${holder} (another Tether server, or npm run replay?): stop it first`);
  }
}

/** This process's locks, by file: the descriptor that holds it and the stores sharing it (a store reopened in one process, as tests do). */
const held = new Map<string, { fd: number; users: number }>();

/** Takes the directory for this process (creating it if needed) until `release`. Throws DataDirInUseError. */
export function lockDataDir(dataDir: string): { release(): void } {
  mkdirSync(dataDir, { recursive: true });
  const path = resolve(dataDir, LOCK_FILE);
  let lock = held.get(path);
  if (!lock) {
    const fd = openSync(path, "a+", 0o644);
    try {
      if (!take(fd)) throw new DataDirInUseError(dataDir, holderOf(path));
      ftruncateSync(fd, 0);
      writeSync(fd, `${process.pid}\n`);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    lock = { fd, users: 0 };
    held.set(path, lock);
  }
  lock.users++;
  let released = false;
  const taken = lock;
  return {
    release: () => {
      if (released) return;
      released = true;
      if (--taken.users > 0) return;
      held.delete(path);
      // Closing the descriptor drops the lock. The file stays: removing it would let a process
      // that opened it just before lock a name nobody else sees any more.
      closeSync(taken.fd);
    },
  };
}

/** True once this descriptor holds the lock; false if another open file does. */
function take(fd: number): boolean {
  let c;
  try {
    c = libc();
  } catch {
    return true; // no libc to lock with (see above)
  }
  if (c.flock(fd, LOCK_EX | LOCK_NB) === 0) return true;
  const errno = c.errno();
  if (errno === EWOULDBLOCK) return false;
  throw new Error(`could not lock ${LOCK_FILE} in the data directory (errno ${errno}; is it on a file system without locks?)`);
}

function holderOf(path: string): string {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8"), 10);
    // As the holder's own pid namespace numbers it (another container's pid 1, say).
    if (Number.isSafeInteger(pid) && pid > 0) return `process ${pid}`;
  } catch {}
  return "another process";
}
