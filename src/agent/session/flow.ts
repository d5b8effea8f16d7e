import type { ChannelContext } from "./channel.ts";

/**
 * Output flow control: terminal and command output waits in the agent's socket while the link
 * (or a server pausing its reads for a recorder that is behind) is slower than the program.
 * Past the high-water mark the channel stops reading, so the program blocks on its own output,
 * until the socket is back under the low-water mark. The agent's memory stays bounded.
 */
export const OUTPUT_HIGH_WATER = 4 * 1024 * 1024;
export const OUTPUT_LOW_WATER = 1024 * 1024;
/**
 * A terminal whose program turned XON/XOFF off (a full-screen program in raw mode) cannot be
 * paused (Bun.Terminal cannot stop reading its PTY): past this its output is dropped until the
 * socket drains, and the drop is logged.
 */
export const OUTPUT_HARD_CAP = 32 * 1024 * 1024;
const POLL_MS = 20;

/** Resolves once the socket's backlog is under the low-water mark (at once when it is). */
export async function drained(ctx: ChannelContext): Promise<void> {
  while (ctx.backlog() > OUTPUT_LOW_WATER) await Bun.sleep(POLL_MS);
}

/** IXON in termios' c_iflag: the line discipline honours XOFF (^S) and XON (^Q). */
const IXON = process.platform === "darwin" ? 0x200 : 0o2000;
const XOFF = "\x13";
const XON = "\x11";

/**
 * A terminal's flow control: XOFF typed into the PTY past the high-water mark (the line
 * discipline stops the program's output, as ^S would), XON once the socket drained. Without
 * IXON, output past the hard cap is dropped instead.
 */
export class TerminalFlow {
  private paused: ReturnType<typeof setInterval> | null = null;
  private droppedBytes = 0;

  constructor(private readonly ctx: ChannelContext, private readonly term: () => Bun.Terminal | undefined) {}

  /** Whether `bytes` of output may be sent now; pauses the terminal when the socket is full. */
  admit(bytes: number): boolean {
    const backlog = this.ctx.backlog();
    if (backlog > OUTPUT_HIGH_WATER && !this.paused) this.pause();
    if (backlog <= OUTPUT_HARD_CAP) return true;
    if (this.droppedBytes === 0) this.ctx.log.warn({ event: "term.output_dropped", channel: this.ctx.id, backlog }, "terminal output faster than the link and flow control off: dropping output until it drains");
    this.droppedBytes += bytes;
    return false;
  }

  stop(): void {
    if (this.paused) clearInterval(this.paused);
    this.paused = null;
  }

  private pause(): void {
    const term = this.term();
    const ixon = term && !term.closed && (term.inputFlags & IXON) !== 0;
    if (ixon) term.write(XOFF);
    this.paused = setInterval(() => {
      if (this.ctx.backlog() > OUTPUT_LOW_WATER) return;
      this.stop();
      if (this.droppedBytes > 0) this.ctx.log.warn({ event: "term.output_resumed", channel: this.ctx.id, dropped_bytes: this.droppedBytes }, "terminal output flows again");
      this.droppedBytes = 0;
      const t = this.term();
      if (ixon && t && !t.closed) t.write(XON);
    }, POLL_MS);
  }
}
