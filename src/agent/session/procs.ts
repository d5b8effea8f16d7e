import type { Subprocess } from "bun";
import { readdirSync, readFileSync } from "node:fs";

/**
 * The processes a terminal or a command leaves behind. Both start in a session of their own
 * (the PTY's shell is its session leader; a command is spawned detached, i.e. setsid), so their
 * children and grandchildren share that session id even when they moved to another process
 * group (a shell's background job) or their parent exited. Linux: read from /proc; elsewhere
 * only the process group of the leader is known.
 */
export function sessionMembers(sid: number): number[] | null {
  let names: string[];
  try {
    names = readdirSync("/proc");
  } catch {
    return null; // not Linux: unknown
  }
  const out: number[] = [];
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, "utf8");
    } catch {
      continue; // gone meanwhile
    }
    // pid (comm) state ppid pgrp session …; comm may hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z" || fields[0] === "X") continue; // dead, only waiting to be reaped
    if (Number(fields[3]) === sid) out.push(Number(name));
  }
  return out;
}

/**
 * `sig` to the leader's process group and to every process left in its session. When /proc
 * shows the session empty nothing is sent: the group id could by now be another process's.
 */
export function signalSession(sid: number, sig: NodeJS.Signals): void {
  const members = sessionMembers(sid);
  if (members?.length === 0) return;
  try {
    process.kill(-sid, sig);
  } catch {}
  for (const pid of members ?? []) {
    if (pid === process.pid) continue;
    try {
      process.kill(pid, sig);
    } catch {}
  }
}

/**
 * The two-stage stop of a terminal or command: a first signal at once to the leader and all
 * that is left in its session, SIGKILL to what remains `afterMs` later. The second stage is not
 * called off when the leader exits: what it started may have ignored the first signal.
 */
export class SessionStop {
  private timer: ReturnType<typeof setTimeout> | null = null;
  private killed: Promise<void> | null = null;

  constructor(private readonly leader: Pick<Subprocess, "pid" | "kill">, private readonly leaderExited: () => boolean) {}

  get begun(): boolean {
    return this.killed !== null;
  }

  /** `onKill` runs with the SIGKILL stage (a terminal closes its PTY there). Once only. */
  begin(first: NodeJS.Signals, afterMs: number, onKill: () => void = () => {}): void {
    if (this.killed) return;
    this.signal(first);
    this.killed = new Promise<void>((done) => {
      this.timer = setTimeout(() => {
        this.signal("SIGKILL");
        onKill();
        done();
      }, afterMs);
    });
  }

  /**
   * Called once the leader exited, before the channel is reported closed: resolves at once when
   * no stop began or nothing of the session is left (the SIGKILL is called off), else after the
   * SIGKILL, so that an agent shutting down does not exit and leave them running.
   */
  async settled(): Promise<void> {
    if (!this.killed) return;
    if (sessionMembers(this.leader.pid)?.length === 0) {
      if (this.timer) clearTimeout(this.timer);
      return;
    }
    await this.killed;
  }

  private signal(sig: NodeJS.Signals): void {
    if (!this.leaderExited()) {
      try {
        this.leader.kill(sig);
      } catch {}
    }
    signalSession(this.leader.pid, sig);
  }
}
