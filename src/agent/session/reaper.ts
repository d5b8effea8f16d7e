import type { FileSink, Subprocess } from "bun";

/** After the SIGTERM, what is left of a command's session this long later gets SIGKILL (as CMD_KILL_AFTER_MS). */
const KILL_AFTER_S = 2;

/**
 * The reaper's script (POSIX sh). It keeps the session ids of the running commands it is told
 * of (`+ sid` at spawn, `- sid` once the command ended) and, when its stdin closes with some
 * still listed, stops each session as the agent would have: SIGTERM to every process in it,
 * SIGKILL to what is left after a grace period. With pkill, `-s` reaches processes that left the
 * leader's group, and an empty session gets nothing; without it (a slim container), the leader's
 * group is what can be reached (`kill -SIG -pgid`, no `--`: dash refuses it).
 */
const SCRIPT = `
live=" "
while read -r op sid; do
  case "$sid" in ''|*[!0-9]*) continue ;; esac
  case "$op" in
    +) live="$live$sid " ;;
    -) live=$(printf '%s' "$live" | sed "s/ $sid / /") ;;
  esac
done
[ "$live" = " " ] && exit 0
if command -v pkill >/dev/null 2>&1; then stop() { pkill "-$1" -s "$2"; }; else stop() { kill "-$1" "-$2"; }; fi
for sid in $live; do stop TERM "$sid" 2>/dev/null; done
sleep ${KILL_AFTER_S}
for sid in $live; do stop KILL "$sid" 2>/dev/null; done
`;

/**
 * Stops running commands when the agent dies without stopping them (SIGKILL, a crash, the OOM
 * killer). A command runs in a session of its own (so that a cancel reaches its children), which
 * also means nothing stops it when the agent is gone: its pipes close, and a command that does
 * not write (`sleep`, a hung job) runs on. Under systemd the unit's control group ends with the
 * managed agent; an attended agent started from a terminal has no such keeper.
 *
 * The keeper is a small `sh` of its own session (Ctrl+C in the agent's terminal does not reach
 * it), started with the first command. The agent writes to its stdin; the kernel closes that pipe
 * however the agent ends, and the script then stops what is still listed. A clean exit has
 * ended its commands first (the list is empty), and the script just exits. Where there is no
 * `sh` (or it cannot start) commands run without it, as before.
 */
export class Reaper {
  private proc: Subprocess<"pipe", "ignore", "ignore"> | null = null;
  private failed = false;

  /** `sid`: a command's session id (its leader's pid), now running. */
  watch(sid: number): void {
    this.write(`+ ${sid}\n`);
  }

  /** The command's session was stopped, or the command ended on its own: no longer the reaper's. */
  release(sid: number): void {
    if (this.proc) this.write(`- ${sid}\n`);
  }

  /** The reaper's own pid (tests), null before the first command. */
  get pid(): number | null {
    return this.proc?.pid ?? null;
  }

  private write(line: string): void {
    const stdin = this.stdin();
    if (!stdin) return;
    try {
      stdin.write(line);
      stdin.flush();
    } catch {
      // The reaper is gone (killed by hand): commands still run, without it.
    }
  }

  private stdin(): FileSink | null {
    if (this.proc || this.failed) return this.proc?.stdin ?? null;
    try {
      this.proc = Bun.spawn(["/bin/sh", "-c", SCRIPT], { stdin: "pipe", stdout: "ignore", stderr: "ignore", detached: true });
      // Neither the process nor the pipe keeps the agent running.
      this.proc.unref();
      this.proc.stdin.unref();
      return this.proc.stdin;
    } catch {
      this.failed = true;
      return null;
    }
  }
}

/** The agent's one reaper. */
export const reaper = new Reaper();
