import type { Subprocess } from "bun";
import { STDERR, STDOUT, commandFrame } from "../../protocol/frames.ts";
import { errorEnd, resolvePath, type Channel, type ChannelContext, type StopReason } from "./channel.ts";
import { drained, OUTPUT_HIGH_WATER } from "./flow.ts";
import { SessionStop } from "./procs.ts";
import { reaper } from "./reaper.ts";

/** After SIGTERM, a command that is still there this long later gets SIGKILL. */
export const CMD_KILL_AFTER_MS = 2_000;
/** After the command exits, wait this long at most for its output pipes to close. */
const DRAIN_MS = 1_000;

/**
 * A command channel: argv run directly (no shell), as the agent's user, in `cwd` or the home
 * directory, in a process group of its own so a cancel reaches its children too, and stopped
 * by the reaper if the agent dies while it runs (reaper.ts). stdout and stderr become data
 * frames with a stream byte (frames.ts commandFrame); stdin is /dev/null.
 */
export class CommandChannel implements Channel {
  readonly type = "cmd";
  readonly survivesDisconnect = true;
  private proc: Subprocess<"ignore", "pipe", "pipe"> | null = null;
  private stopping: "cancelled" | "session_ended" | "agent_lost" | null = null;
  private exited = false;
  private halt: SessionStop | null = null;

  constructor(private readonly ctx: ChannelContext, argv: string[], cwd?: string) {
    try {
      this.proc = Bun.spawn(argv, {
        cwd: cwd ? resolvePath(ctx.exec, cwd) : ctx.exec.home,
        env: ctx.exec.env,
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
        detached: true,
      });
    } catch (e) {
      ctx.end(errorEnd(e, "SPAWN_FAILED"));
      return;
    }
    ctx.send({ t: "ch.opened", channel: ctx.id });
    const proc = this.proc;
    // Stopped by the reaper if the agent dies while it runs (reaper.ts).
    reaper.watch(proc.pid);
    const halt = (this.halt = new SessionStop(proc, () => this.exited));
    const streams = Promise.all([this.pump(proc.stdout, STDOUT), this.pump(proc.stderr, STDERR)]);
    void proc.exited.then(async () => {
      this.exited = true;
      // A child that outlives the command may hold the pipes open: do not wait for it forever.
      await Promise.race([streams, Bun.sleep(DRAIN_MS)]);
      // Stopped: the command is gone, but children that ignored SIGTERM may not be.
      await halt.settled();
      reaper.release(proc.pid);
      const exit_code = proc.exitCode;
      ctx.end(this.stopping ? { reason: this.stopping, exit_code } : { reason: "exit", exit_code });
    });
  }

  private async pump(stream: ReadableStream<Uint8Array>, which: typeof STDOUT | typeof STDERR): Promise<void> {
    try {
      for await (const chunk of stream) {
        this.ctx.frame(commandFrame(this.ctx.id, which, chunk));
        // Not reading meanwhile: the pipe fills and the command waits on its own output.
        if (this.ctx.backlog() > OUTPUT_HIGH_WATER) await drained(this.ctx);
      }
    } catch {
      // The pipe broke: the exit path reports the end.
    }
  }

  input(): void {}
  resize(): void {}
  eof(): void {}
  ack(): void {}

  /** SIGTERM to the command, its group and its session; SIGKILL to what is left 2 s later. */
  stop(reason: StopReason): void {
    if (!this.halt || this.halt.begun) return;
    // The command may have exited already while its output drains (a child holds the pipes):
    // its end stays "exit", but what it left behind is stopped all the same.
    if (!this.exited) this.stopping = reason ?? "cancelled";
    this.halt.begin("SIGTERM", CMD_KILL_AFTER_MS);
  }
}
