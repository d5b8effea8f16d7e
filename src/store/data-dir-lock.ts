import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";

/**
 * One process per embedded data directory. PGlite has no lock of its own, so two servers
 * started on the same directory (a second `npm start` by mistake) would both open it and
 * corrupt it. A server therefore holds `tether.pid` in the directory, as PostgreSQL holds
 * `postmaster.pid`: a file whose process is alive refuses the second server, and a file left by
 * a process that died (kill -9, a crash, a reboot) is taken over. The file also names the boot
 * and the process's start time (Linux), so a pid reused by another process after a crash or a
 * reboot is seen as stale; elsewhere the pid alone decides, and the error says what to remove.
 * (Two servers started at the same instant on a stale file can both take it over; only flock
 * would close that, and Bun has none.)
 */
export const LOCK_FILE = "tether.pid";
/** Stores of this process open on each lock file: the file goes with the last one's release. */
const held = new Map<string, number>();

export class DataDirInUseError extends Error {
  constructor(
    readonly dataDir: string,
    readonly pid: number,
  ) {
    super(`the data directory ${dataDir} is in use by process ${pid} (another Tether server?): stop that process first, or, if it is not a Tether server, remove ${join(dataDir, LOCK_FILE)}`);
  }
}

/** Takes the directory for this process (creating it if needed); the release removes the file. Throws DataDirInUseError. */
export function lockDataDir(dataDir: string): { release(): void } {
  mkdirSync(dataDir, { recursive: true });
  const path = resolve(dataDir, LOCK_FILE);
  const taken = () => {
    held.set(path, (held.get(path) ?? 0) + 1);
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        const left = (held.get(path) ?? 1) - 1;
        if (left > 0) return void held.set(path, left);
        held.delete(path);
        if (holderOf(path)?.pid === process.pid) rmSync(path, { force: true });
      },
    };
  };
  for (let attempt = 0; ; attempt++) {
    if (create(path)) return taken();
    const holder = holderOf(path);
    // This process already holds it (a store reopened in the same process, as tests do).
    if (holder?.pid === process.pid) return taken();
    if (holder !== null && alive(holder)) throw new DataDirInUseError(dataDir, holder.pid);
    if (attempt >= 2) throw new DataDirInUseError(dataDir, holder?.pid ?? 0);
    // Stale: its process is gone (kill -9, a crash). Taken over.
    rmSync(path, { force: true });
  }
}

/**
 * Creates the lock file with this process's pid in it, atomically: written under a name of its
 * own, then linked to the lock's name (which fails if that exists), so nobody reads it empty.
 */
function create(path: string): boolean {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${process.pid}\n${BOOT_ID}\n${startTimeOf(process.pid)}\n`, { mode: 0o600 });
  try {
    linkSync(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  } finally {
    rmSync(tmp, { force: true });
  }
}

interface Holder {
  pid: number;
  /** Empty where the system does not say. */
  bootId: string;
  startTime: string;
}

function holderOf(path: string): Holder | null {
  try {
    const [pidText = "", bootId = "", startTime = ""] = readFileSync(path, "utf8").split("\n");
    const pid = Number.parseInt(pidText, 10);
    return Number.isSafeInteger(pid) && pid > 0 ? { pid, bootId, startTime } : null;
  } catch {
    return null;
  }
}

/** Whether the process that wrote the file still runs: its pid exists, in this boot, started when it did. */
function alive(h: Holder): boolean {
  try {
    process.kill(h.pid, 0);
  } catch (err) {
    // EPERM: it exists, under another user.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  if (h.bootId && BOOT_ID && h.bootId !== BOOT_ID) return false;
  const started = startTimeOf(h.pid);
  return !(h.startTime && started && h.startTime !== started);
}

const BOOT_ID = readOr("/proc/sys/kernel/random/boot_id").trim();

/** Field 22 of /proc/<pid>/stat (clock ticks since boot), after the command name, which may hold spaces. */
function startTimeOf(pid: number): string {
  const stat = readOr(`/proc/${pid}/stat`);
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? "";
}

function readOr(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}
