import type { Subprocess } from "bun";
import { STDERR, STDOUT, commandFrame } from "../../protocol/frames.ts";
import { errorEnd, resolvePath, type Channel, type ChannelContext, type StopReason } from "./channel.ts";

/** After SIGTERM, a command that is still there this long later gets SIGKILL. */
export const CMD_KILL_AFTER_MS = 2_000;
/** After the command exits, wait this long at most for its output pipes to close. */
const DRAIN_MS = 1_000;

/**
 * A command channel: argv run directly (no shell), as the agent's user, in `cwd` or the home
 * directory, in a process group of its own so a cancel reaches its children too. stdout and
 * stderr become data frames with a stream byte (frames.ts commandFrame); stdin is /dev/null.
 */
export class CommandChannel implements Channel {
  readonly type = "cmd";
  readonly survivesDisconnect = true;
  private proc: Subprocess<"ignore", "pipe", "pipe"> | null = null;
  private stopping: "cancelled" | "session_ended" | "agent_lost" | null = null;
  private exited = false;
  private killTimer: ReturnType<typeof setTimeout> | null = null;

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
    const streams = Promise.all([this.pump(proc.stdout, STDOUT), this.pump(proc.stderr, STDERR)]);
    void proc.exited.then(async () => {
      this.exited = true;
      if (this.killTimer) clearTimeout(this.killTimer);
      // A child that outlives the command may hold the pipes open: do not wait for it forever.
      await Promise.race([streams, Bun.sleep(DRAIN_MS)]);
      const exit_code = proc.exitCode;
      ctx.end(this.stopping ? { reason: this.stopping, exit_code } : { reason: "exit", exit_code });
    });
  }

  private async pump(stream: ReadableStream<Uint8Array>, which: typeof STDOUT | typeof STDERR): Promise<void> {
    try {
      for await (const chunk of stream) this.ctx.frame(commandFrame(this.ctx.id, which, chunk));
    } catch {
      // The pipe broke: the exit path reports the end.
    }
  }

  input(): void {}
  resize(): void {}
  eof(): void {}
  ack(): void {}

  /** SIGTERM to the command's process group, SIGKILL if it is still there 2 s later. */
  stop(reason: StopReason): void {
    if (!this.proc || this.stopping || this.exited) return;
    this.stopping = reason ?? "cancelled";
    this.signal("SIGTERM");
    this.killTimer = setTimeout(() => this.signal("SIGKILL"), CMD_KILL_AFTER_MS);
  }

  private signal(sig: NodeJS.Signals): void {
    const proc = this.proc!;
    try {
      process.kill(-proc.pid, sig);
    } catch {
      try {
        proc.kill(sig);
      } catch {}
    }
  }
}
