import { randomBytes } from "node:crypto";
import { open, rename, stat, unlink, type FileHandle } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { TRANSFER_WINDOW } from "../../protocol/relay.ts";
import { errorEnd, failure, resolvePath, type Channel, type ChannelContext, type StopReason } from "./channel.ts";

/**
 * An upload: a temp file next to the target (`.<name>.tether-upload-<random>`, 0600), data
 * frames appended in order, ch.ack {bytes written so far} every TRANSFER_WINDOW/2 bytes so the
 * sender can keep TRANSFER_WINDOW in flight; ch.eof with exactly `size` bytes → fsync, mode
 * 0644, rename over the target → ch.closed {eof, bytes}. More than `size` bytes ends it
 * "too_large", fewer at ch.eof SIZE_MISMATCH; the temp file is removed on every unhappy end.
 */
export class UploadChannel implements Channel {
  readonly type = "upload";
  readonly survivesDisconnect = false;
  private readonly target: string;
  private temp: string | null = null;
  private fh: FileHandle | null = null;
  private received = 0;
  private written = 0;
  private lastAck = 0;
  private done = false;
  private renaming = false;
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly ctx: ChannelContext, path: string, private readonly size: number, private readonly window = TRANSFER_WINDOW) {
    this.target = resolvePath(ctx.exec, path);
    void this.step(() => this.openTemp());
  }

  private async openTemp(): Promise<void> {
    await this.checkTarget();
    const temp = join(dirname(this.target), `.${tempStem(basename(this.target))}.tether-upload-${randomBytes(6).toString("hex")}`);
    this.fh = await open(temp, "wx", 0o600);
    this.temp = temp;
    this.ctx.send({ t: "ch.opened", channel: this.ctx.id });
  }

  /**
   * The target may be missing or a regular file (a symlink counts as what it points to). A
   * directory is EISDIR; anything else (a FIFO, a device such as /dev/null, a socket) is
   * ENOTFILE: the rename would replace the node itself with a regular file.
   */
  private async checkTarget(): Promise<void> {
    const existing = await stat(this.target).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return null;
      throw e;
    });
    if (existing?.isDirectory()) throw Object.assign(new Error(`EISDIR: the target is a directory: '${this.target}'`), { code: "EISDIR" });
    if (existing && !existing.isFile()) throw Object.assign(new Error(`not a regular file: '${this.target}'`), { code: "ENOTFILE" });
  }

  /** Runs `fn` after everything queued before it, unless the upload has ended meanwhile. */
  private step(fn: () => Promise<void>): Promise<void> {
    const run = async () => {
      if (this.done) return;
      try {
        await fn();
      } catch (e) {
        this.finish(errorEnd(e));
      }
    };
    this.chain = this.chain.then(run);
    return this.chain;
  }

  input(payload: Uint8Array): void {
    // Data after ch.eof while the rename runs: the rename decides the outcome, as for a stop.
    if (this.done || this.renaming) return;
    if (this.received + payload.byteLength > this.size) {
      this.finish({ reason: "too_large", bytes: this.received });
      return;
    }
    this.received += payload.byteLength;
    void this.step(async () => {
      let off = 0;
      while (off < payload.byteLength) off += (await this.fh!.write(payload, off, payload.byteLength - off)).bytesWritten;
      this.written += payload.byteLength;
      if (this.written - this.lastAck >= this.window / 2) {
        this.lastAck = this.written;
        this.ctx.send({ t: "ch.ack", channel: this.ctx.id, bytes: this.written });
      }
    });
  }

  eof(): void {
    void this.step(async () => {
      if (this.written !== this.size) {
        this.finish({ ...failure("SIZE_MISMATCH", `got ${this.written} bytes, expected ${this.size}`), bytes: this.written });
        return;
      }
      const fh = this.fh!;
      await fh.sync();
      await fh.chmod(0o644);
      await fh.close();
      this.fh = null;
      // Stopped meanwhile (ch.close, the connection lost): it was reported cancelled, so the
      // target must stay as it was; `finish` removes the temp file once this step returns.
      if (this.done) return;
      // Checked again: the rename would replace whatever the target became meanwhile.
      await this.checkTarget();
      // From here the rename decides: a stop now waits for it and reports its outcome.
      this.renaming = true;
      await rename(this.temp!, this.target);
      this.temp = null;
      this.finish({ reason: "eof", bytes: this.written });
    });
  }

  resize(): void {}
  ack(): void {}

  stop(reason: StopReason): void {
    if (this.renaming) return; // the upload is being committed: it ends as the rename ends
    this.finish({ reason: reason ?? "cancelled", bytes: this.received });
  }

  private finish(end: Parameters<ChannelContext["end"]>[0]): void {
    if (this.done) return;
    this.done = true;
    this.ctx.end(end);
    if (end.reason !== "eof") void this.chain.finally(() => this.discard());
  }

  /** Closes and removes the temp file (after any write in progress). */
  private async discard(): Promise<void> {
    await this.fh?.close().catch(() => {});
    this.fh = null;
    if (this.temp) await unlink(this.temp).catch(() => {});
    this.temp = null;
  }
}

/** The target's name as the temp file's starts with it, cut so that the whole fits in NAME_MAX (255 bytes). */
function tempStem(name: string): string {
  const chars = Array.from(name); // whole code points: a cut never splits one
  let bytes = Buffer.byteLength(name);
  while (bytes > 200) bytes -= Buffer.byteLength(chars.pop()!);
  return chars.join("");
}
