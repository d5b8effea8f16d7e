import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { libc } from "../libc.ts";
import type { Logger } from "../log.ts";

/**
 * A longer listen queue than Bun's. Bun listens with a backlog of 512 whatever it is asked
 * (uSockets' `listen(fd, 512)`; Bun.serve's `backlog` option is ignored in 1.4), and a
 * reconnect storm is thousands of agents connecting at once while the server's thread is busy
 * with the handshakes before them. Once the queue is full, the kernel drops each further SYN and
 * that agent retries after 1 s, then 3 s, then 7 s: measured here (bench/agents.ts), a storm of
 * 5,000 had 2,700–5,000 connections turned away and its last agents online seconds after the
 * rest. On Linux, `listen()` on a socket that is already listening only changes its backlog, so
 * this finds the server's listening sockets among this process's descriptors and calls it
 * again, through libc (bun:ffi). The kernel caps the value at `net.core.somaxconn` (4096 by
 * default since Linux 5.4). Elsewhere, or if anything here fails, Bun's 512 stays and a warning
 * says so: never fatal.
 */
export function widenListenBacklog(port: number, backlog: number, log: Logger): number {
  if (backlog <= 0) return 0;
  if (process.platform !== "linux") {
    log.warn({ backlog }, "listen backlog: left at Bun's 512 (widening it is done on Linux only)");
    return 0;
  }
  try {
    const { listen, errno } = libc();
    let widened = 0;
    for (const { fd, link } of listeningFds(port)) {
      // Still that socket (not closed and its number reused since it was found)?
      if (linkOf(fd) !== link) continue;
      if (listen(fd, backlog) !== 0) throw new Error(`listen(${fd}, ${backlog}) failed (errno ${errno()})`);
      widened++;
    }
    if (widened === 0) throw new Error(`no listening socket of this process on port ${port}`);
    log.debug({ port, backlog, sockets: widened }, "listen backlog widened");
    return widened;
  } catch (err) {
    log.warn({ err: (err as Error).message, backlog }, "listen backlog: left at Bun's 512; reconnect storms will see SYN retries");
    return 0;
  }
}

/** This process's descriptors of TCP sockets listening on `port` (any address, IPv4 and IPv6), with what /proc/self/fd links them to. */
function listeningFds(port: number): Array<{ fd: number; link: string }> {
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  const inodes = new Set<string>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = readFileSync(table, "utf8");
    } catch {
      continue; // no IPv6
    }
    // "sl local_address rem_address st … inode": state 0A is LISTEN.
    for (const line of text.split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length > 9 && cols[1]!.endsWith(hexPort) && cols[3] === "0A") inodes.add(cols[9]!);
    }
  }
  const fds: Array<{ fd: number; link: string }> = [];
  for (const name of readdirSync("/proc/self/fd")) {
    try {
      const link = readlinkSync(`/proc/self/fd/${name}`);
      const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
      if (inode && inodes.has(inode)) fds.push({ fd: Number(name), link });
    } catch {} // closed meanwhile (the readdir's own descriptor, say)
  }
  return fds;
}

function linkOf(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return "";
  }
}
