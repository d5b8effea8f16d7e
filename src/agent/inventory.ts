import { readFileSync, statfsSync } from "node:fs";
import os from "node:os";
import type { Inventory } from "../protocol/agent.ts";
import { mapStrings } from "../protocol/storable.ts";
import { AGENT_VERSION } from "./version.ts";

/**
 * What the agent reports about its machine (SPEC M4), from node:os, /proc and `who`. Every
 * probe is best effort: a field that cannot be read is left out (or an empty list), never an
 * error. The external IP is not here: the server records it as it sees the connection.
 * `who` runs as a child process the agent does not wait for synchronously: a slow one must not
 * stall the event loop (heartbeats, sessions, the liveness check).
 */
export async function gatherInventory(): Promise<Inventory> {
  return collectInventory(await loggedOnUsers());
}

/** The inventory from the synchronous probes, with `users` as given (gatherInventory passes `who`'s). */
export function collectInventory(users: string[] = []): Inventory {
  const inv: Inventory = {
    os: osRelease(),
    kernel: `${os.type()} ${os.release()}`.slice(0, 256),
    cpu: cpu(),
    memory_bytes: os.totalmem(),
    disks: disks(),
    hostname: os.hostname().slice(0, 256),
    private_ips: addresses().ips,
    macs: addresses().macs,
    users,
    uptime_s: Math.floor(os.uptime()),
    timezone: timezone(),
    agent_version: AGENT_VERSION,
    elevated: typeof process.getuid === "function" ? process.getuid() === 0 : false,
  };
  return storableStrings(inv);
}

/**
 * The server refuses text its database cannot store (NUL, unpaired surrogates): whatever a
 * probe read (an os-release file, a user name), the report must not keep the machine offline.
 */
export const storableStrings = <T>(value: T): T => mapStrings(value, (s) => s.replaceAll("\u0000", "").toWellFormed());

/** The inventory without what changes all the time (uptime, free space), to notice real changes. */
export function inventoryFingerprint(inv: Inventory): string {
  return JSON.stringify({ ...inv, uptime_s: undefined, disks: inv.disks?.map((d) => ({ mount: d.mount, size_bytes: d.size_bytes })) });
}

function osRelease(): Inventory["os"] {
  for (const path of ["/etc/os-release", "/usr/lib/os-release"]) {
    try {
      const fields = new Map<string, string>();
      for (const line of readFileSync(path, "utf8").split("\n")) {
        const m = line.match(/^([A-Z_]+)=(.*)$/);
        if (m) fields.set(m[1]!, m[2]!.trim().replace(/^(["'])(.*)\1$/, "$2"));
      }
      const name = fields.get("NAME") ?? fields.get("ID");
      const version = fields.get("VERSION_ID") ?? fields.get("VERSION") ?? fields.get("BUILD_ID");
      return { ...(name ? { name: name.slice(0, 128) } : {}), ...(version ? { version: version.slice(0, 128) } : {}) };
    } catch {}
  }
  return { name: os.type().slice(0, 128), version: os.release().slice(0, 128) };
}

function cpu(): Inventory["cpu"] {
  const cpus = os.cpus();
  const model = cpus[0]?.model?.trim();
  return { ...(model ? { model: model.slice(0, 256) } : {}), cores: cpus.length };
}

const REAL_FS = new Set(["ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "vfat", "exfat", "ntfs", "ntfs3", "fuseblk", "overlay", "apfs", "hfs"]);

function disks(): NonNullable<Inventory["disks"]> {
  const mounts = new Set<string>(["/"]);
  try {
    for (const line of readFileSync("/proc/mounts", "utf8").split("\n")) {
      const [, mount, type] = line.split(" ");
      if (mount && type && REAL_FS.has(type) && !mount.startsWith("/proc") && !mount.startsWith("/sys")) mounts.add(mount.replace(/\\040/g, " "));
    }
  } catch {}
  const out: NonNullable<Inventory["disks"]> = [];
  const seen = new Set<string>();
  for (const mount of mounts) {
    if (out.length >= 64) break;
    try {
      const s = statfsSync(mount);
      const size = s.blocks * s.bsize;
      const key = `${s.type}:${s.blocks}:${s.bfree}`; // bind mounts of one filesystem count once
      if (size === 0 || (mount !== "/" && seen.has(key))) continue;
      seen.add(key);
      out.push({ mount: mount.slice(0, 512), size_bytes: size, free_bytes: s.bavail * s.bsize });
    } catch {}
  }
  return out;
}

function addresses(): { ips: string[]; macs: string[] } {
  const ips = new Set<string>();
  const macs = new Set<string>();
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) {
      if (a.internal) continue;
      if (!(a.family === "IPv6" && a.address.toLowerCase().startsWith("fe80:"))) ips.add(a.address);
      if (a.mac && a.mac !== "00:00:00:00:00:00") macs.add(a.mac.toLowerCase());
    }
  }
  return { ips: [...ips].slice(0, 64), macs: [...macs].slice(0, 64) };
}

/**
 * Distinct user names from `who` (utmp); empty when it is missing, fails, says nothing or takes
 * longer than `timeoutMs` (then it is killed). `argv` is for tests.
 */
export async function loggedOnUsers(argv: string[] = ["who"], timeoutMs = 2_000): Promise<string[]> {
  try {
    const proc = Bun.spawn(argv, { stdin: "ignore", stdout: "pipe", stderr: "ignore", timeout: timeoutMs, killSignal: "SIGKILL" });
    const reading = new Response(proc.stdout).text(); // read while it runs: a full pipe would stall it
    if ((await proc.exited) !== 0) {
      reading.catch(() => {}); // killed or failed: do not wait for a pipe someone else may hold
      return [];
    }
    const out = await reading;
    const names = new Set<string>();
    for (const line of out.split("\n")) {
      const name = line.trim().split(/\s+/)[0];
      if (name) names.add(name.slice(0, 128));
    }
    return [...names].slice(0, 64);
  } catch {
    return [];
  }
}

function timezone(): string {
  const tz = process.env.TZ || Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  if (tz) return tz.slice(0, 64);
  try {
    return readFileSync("/etc/timezone", "utf8").trim().slice(0, 64);
  } catch {
    return "";
  }
}
