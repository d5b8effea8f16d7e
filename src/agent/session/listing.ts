import { lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import type { z } from "zod";
import type { FileEntry } from "../../protocol/relay.ts";
import { errorEnd, resolvePath, type Channel, type ChannelContext } from "./channel.ts";

type Entry = z.infer<typeof FileEntry>;

/** At most this many entries, and about this many bytes, go in one files.listing. */
export const MAX_ENTRIES = 10_000;
const MAX_LISTING_BYTES = 3 * 1024 * 1024;

/**
 * A directory listing: files.listing {path (absolute), entries sorted by name}, then
 * ch.closed eof. Entries are lstat'ed (a symlink is a "link", not followed). A directory
 * larger than the limits above is cut at them, in name order.
 */
export class ListingChannel implements Channel {
  readonly type = "list";
  readonly survivesDisconnect = false;
  private stopped = false;

  constructor(private readonly ctx: ChannelContext, path: string) {
    void this.run(resolvePath(ctx.exec, path));
  }

  private async run(path: string): Promise<void> {
    let entries: Entry[];
    try {
      entries = await listDirectory(path);
    } catch (e) {
      if (!this.stopped) this.ctx.end(errorEnd(e));
      return;
    }
    if (this.stopped) return;
    this.ctx.send({ t: "files.listing", channel: this.ctx.id, path, entries });
    this.ctx.end({ reason: "eof" });
  }

  input(): void {}
  resize(): void {}
  eof(): void {}
  ack(): void {}
  stop(reason: "session_ended" | "agent_lost" | undefined): void {
    if (this.stopped) return;
    this.stopped = true;
    this.ctx.end({ reason: reason ?? "cancelled" });
  }
}

export async function listDirectory(path: string): Promise<Entry[]> {
  const names = (await readdir(path)).sort();
  const entries: Entry[] = [];
  let bytes = 0;
  for (let i = 0; i < names.length && entries.length < MAX_ENTRIES; i += 256) {
    const batch = names.slice(i, i + 256);
    const stats = await Promise.all(batch.map((name) => lstat(join(path, name)).catch(() => null)));
    for (let j = 0; j < batch.length && entries.length < MAX_ENTRIES; j++) {
      const name = batch[j]!;
      const st = stats[j];
      bytes += name.length + 48;
      if (bytes > MAX_LISTING_BYTES) return entries;
      if (!st) {
        entries.push({ name, type: "other", size: 0, mtime: 0, mode: 0 }); // vanished or unreadable meanwhile
        continue;
      }
      const type = st.isFile() ? "file" : st.isDirectory() ? "dir" : st.isSymbolicLink() ? "link" : "other";
      entries.push({ name, type, size: st.size, mtime: Math.round(st.mtimeMs), mode: st.mode & 0o7777 });
    }
  }
  return entries;
}
