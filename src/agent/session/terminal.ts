import type { Subprocess } from "bun";
import { dataFrame } from "../../protocol/frames.ts";
import { errorEnd, type Channel, type ChannelContext, type StopReason } from "./channel.ts";
import { TerminalFlow } from "./flow.ts";
import { SessionStop } from "./procs.ts";

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
  private halt: SessionStop | null = null;
  private readonly flow: TerminalFlow;

  constructor(private readonly ctx: ChannelContext, cols = 80, rows = 24) {
    this.flow = new TerminalFlow(ctx, () => this.proc?.terminal);
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
          data: (_term, bytes) => {
            if (this.flow.admit(bytes.byteLength)) ctx.frame(dataFrame(ctx.id, bytes));
          },
          exit: () => ptyDone(),
        },
      });
    } catch (e) {
      ctx.end(errorEnd(e, "SPAWN_FAILED"));
      return;
    }
    ctx.send({ t: "ch.opened", channel: ctx.id });
    const proc = this.proc;
    const halt = (this.halt = new SessionStop(proc, () => this.exited));
    void proc.exited.then(async () => {
      this.exited = true;
      this.flow.stop();
      // What the shell wrote last is still in the PTY: deliver it before ch.closed.
      await Promise.race([ptyClosed, Bun.sleep(DRAIN_MS)]);
      // Stopped: the shell is gone, but what ran in the terminal (a job ignoring SIGHUP, a
      // background job of a shell that does not hang its jobs up) may not be.
      await halt.settled();
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

  /**
   * SIGHUP (what a closed terminal sends) to everything that runs in it (the shell leads its
   * session; a shell such as dash does not pass SIGHUP on to its jobs), SIGKILL to what is left
   * 2 s later.
   */
  stop(reason: StopReason): void {
    if (!this.halt || this.halt.begun) return;
    // The shell may have exited already while the PTY drains: its end stays "exit".
    if (!this.exited) this.stopping = reason ?? "closed";
    const terminal = this.proc?.terminal;
    this.halt.begin("SIGHUP", TERM_KILL_AFTER_MS, () => {
      try {
        terminal?.close();
      } catch {}
    });
  }
}
