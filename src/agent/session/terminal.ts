import type { Subprocess } from "bun";
import { dataFrame } from "../../protocol/frames.ts";
import { errorEnd, type Channel, type ChannelContext, type StopReason } from "./channel.ts";

/** After SIGHUP, a shell that is still there this long later gets SIGKILL. */
export const TERM_KILL_AFTER_MS = 2_000;
/** After the shell exits, wait this long at most for the PTY to deliver the rest of its output. */
const DRAIN_MS = 500;

/**
 * A terminal channel: the agent user's shell ($SHELL, else /bin/sh) on a real PTY (Bun's
 * terminal support), in the home directory, TERM=xterm-256color. PTY output becomes data
 * frames; data frames are typed into it. Output produced while the agent is disconnected is
 * dropped (the shell keeps running; a resumed viewer sees what comes next).
 */
export class TerminalChannel implements Channel {
  readonly type = "term";
  readonly survivesDisconnect = true;
  private proc: Subprocess | null = null;
  private stopping: "closed" | "session_ended" | "agent_lost" | null = null;
  private exited = false;
  private killTimer: ReturnType<typeof setTimeout> | null = null;

  constructor(private readonly ctx: ChannelContext, cols = 80, rows = 24) {
    let ptyDone = () => {};
    const ptyClosed = new Promise<void>((r) => (ptyDone = r));
    try {
      this.proc = Bun.spawn([ctx.exec.shell], {
        cwd: ctx.exec.home,
        env: ctx.exec.env,
        terminal: {
          cols,
          rows,
          name: "xterm-256color",
          data: (_term, bytes) => ctx.frame(dataFrame(ctx.id, bytes)),
          exit: () => ptyDone(),
        },
      });
    } catch (e) {
      ctx.end(errorEnd(e, "SPAWN_FAILED"));
      return;
    }
    ctx.send({ t: "ch.opened", channel: ctx.id });
    const proc = this.proc;
    void proc.exited.then(async () => {
      this.exited = true;
      if (this.killTimer) clearTimeout(this.killTimer);
      // What the shell wrote last is still in the PTY: deliver it before ch.closed.
      await Promise.race([ptyClosed, Bun.sleep(DRAIN_MS)]);
      try {
        proc.terminal?.close();
      } catch {}
      const exit_code = proc.exitCode;
      ctx.end(this.stopping ? { reason: this.stopping, exit_code } : { reason: "exit", exit_code });
    });
  }

  input(payload: Uint8Array): void {
    if (this.stopping || this.exited || !this.proc?.terminal || this.proc.terminal.closed) return;
    this.proc.terminal.write(payload);
  }

  resize(cols: number, rows: number): void {
    if (this.stopping || this.exited || !this.proc?.terminal || this.proc.terminal.closed) return;
    this.proc.terminal.resize(cols, rows);
  }

  eof(): void {}
  ack(): void {}

  /** SIGHUP (what a closed terminal sends), SIGKILL if the shell is still there shortly after. */
  stop(reason: StopReason): void {
    if (!this.proc || this.stopping || this.exited) return;
    this.stopping = reason ?? "closed";
    const proc = this.proc;
    try {
      proc.kill("SIGHUP");
    } catch {}
    this.killTimer = setTimeout(() => {
      try {
        proc.kill("SIGKILL");
        proc.terminal?.close();
      } catch {}
    }, TERM_KILL_AFTER_MS);
  }
}
