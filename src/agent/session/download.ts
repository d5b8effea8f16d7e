import { constants } from "node:fs";
import { open, stat, type FileHandle } from "node:fs/promises";
import { DATA_HEADER, DATA_TAG } from "../../protocol/frames.ts";
import { FILE_CHUNK, TRANSFER_WINDOW } from "../../protocol/relay.ts";
import { errorEnd, failure, resolvePath, type Channel, type ChannelContext, type StopReason } from "./channel.ts";

/**
 * A download: ch.opened {size}, then the file as data frames of at most FILE_CHUNK bytes,
 * never more than TRANSFER_WINDOW bytes ahead of the viewer's ch.ack (total bytes it has),
 * then ch.closed {eof, bytes}. `size` is the size when it opened; a file that changes while
 * it is read sends what it reads, and `bytes` says how much that was.
 */
export class DownloadChannel implements Channel {
  readonly type = "download";
  readonly survivesDisconnect = false;
  private sent = 0;
  private acked = 0;
  private stopped = false;
  private wake: (() => void) | null = null;

  constructor(private readonly ctx: ChannelContext, path: string, private readonly window = TRANSFER_WINDOW) {
    void this.run(resolvePath(ctx.exec, path));
  }

  private async run(path: string): Promise<void> {
    let fh: FileHandle | null = null;
    try {
      // Checked before opening: opening a FIFO for reading would block until it has a writer.
      regularFile(path, await stat(path));
      // O_NONBLOCK too: the path may have become a FIFO since the check, and a blocked open
      // would hang the channel and hold one of the few threads all file I/O runs on.
      // (No effect on a regular file.)
      fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
      const st = await fh.stat();
      regularFile(path, st);
      if (this.stopped) return;
      this.ctx.send({ t: "ch.opened", channel: this.ctx.id, size: st.size });
      // The file as it was when opened, as scp does: one that keeps growing (a busy log) would
      // otherwise never end. A size of 0 may not mean empty (/proc and /sys files): to EOF.
      const limit = st.size > 0 ? st.size : Infinity;
      for (;;) {
        while (!this.stopped && this.sent - this.acked >= this.window) await new Promise<void>((r) => (this.wake = r));
        if (this.stopped) return;
        const room = Math.min(FILE_CHUNK, this.window - (this.sent - this.acked), limit - this.sent);
        if (room <= 0) break;
        const frame = new Uint8Array(DATA_HEADER + room);
        const { bytesRead } = await fh.read(frame, DATA_HEADER, room, this.sent);
        if (this.stopped) return;
        if (bytesRead === 0) break;
        frame[0] = DATA_TAG;
        new DataView(frame.buffer).setUint32(1, this.ctx.id);
        this.ctx.frame(bytesRead === room ? frame : frame.subarray(0, DATA_HEADER + bytesRead));
        this.sent += bytesRead;
      }
      this.stopped = true;
      this.ctx.end({ reason: "eof", bytes: this.sent });
    } catch (e) {
      if (!this.stopped) {
        this.stopped = true;
        this.ctx.end(errorEnd(e));
      }
    } finally {
      await fh?.close().catch(() => {});
    }
  }

  input(): void {}
  resize(): void {}
  eof(): void {}

  ack(bytes: number): void {
    if (bytes > this.sent) {
      // Acknowledging bytes never sent: the viewer is confused; stop rather than guess.
      if (!this.stopped) {
        this.stopped = true;
        this.wake?.();
        this.ctx.end({ ...failure("BAD_ACK", `ack of ${bytes} bytes, only ${this.sent} sent`), bytes: this.sent });
      }
      return;
    }
    if (bytes <= this.acked) return;
    this.acked = bytes;
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  stop(reason: StopReason): void {
    if (this.stopped) return;
    this.stopped = true;
    const wake = this.wake;
    this.wake = null;
    wake?.();
    this.ctx.end({ reason: reason ?? "cancelled", bytes: this.sent });
  }
}

function regularFile(path: string, st: { isFile(): boolean; isDirectory(): boolean }): void {
  if (st.isDirectory()) throw Object.assign(new Error(`EISDIR: illegal operation on a directory, read '${path}'`), { code: "EISDIR" });
  if (!st.isFile()) throw Object.assign(new Error(`not a regular file: '${path}'`), { code: "ENOTFILE" });
}
