import { expect, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { AgentToServer } from "../../src/protocol/relay.ts";
import type { ChannelContext } from "../../src/agent/session/channel.ts";
import { UploadChannel } from "../../src/agent/session/upload.ts";
import { silentLogger } from "../../src/log.ts";

type End = Parameters<ChannelContext["end"]>[0];

/** An upload channel on a real directory, with what it sent and how it ended. */
function upload(dir: string, name: string, size: number) {
  const sent: AgentToServer[] = [];
  let ended: End | null = null;
  const ctx: ChannelContext = {
    id: 7,
    exec: { shell: "/bin/sh", home: dir, env: {} },
    log: silentLogger,
    frame: () => {},
    send: (m) => void sent.push(m),
    end: (e) => void (ended = e),
  };
  return { channel: new UploadChannel(ctx, name, size), sent, ended: () => ended };
}

test("an upload stopped while it is being committed is reported cancelled and leaves the target as it was", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tether-upload-"));
  try {
    const payload = new TextEncoder().encode("new contents\n");
    // The stop lands at different points of the commit (fsync, chmod, close, rename) from one
    // round to the next; whatever the point, the outcome reported must be the outcome on disk.
    for (let round = 0; round < 30; round++) {
      const name = `target-${round}.txt`;
      writeFileSync(join(dir, name), "old contents\n");
      const u = upload(dir, name, payload.byteLength);
      while (!u.sent.some((m) => m.t === "ch.opened")) await Bun.sleep(1);
      u.channel.input(payload);
      u.channel.eof();
      for (let i = 0; i < round % 6; i++) await new Promise((r) => setImmediate(r));
      u.channel.stop(undefined); // a ch.close: reported "cancelled"
      while (!u.ended()) await Bun.sleep(1);
      await Bun.sleep(20); // the commit step, then the temp file's removal
      const now = readFileSync(join(dir, name), "utf8");
      expect({ round, reason: u.ended()!.reason, now }).toEqual({ round, reason: u.ended()!.reason, now: u.ended()!.reason === "eof" ? "new contents\n" : "old contents\n" });
    }
    expect(readdirSync(dir).filter((f) => f.includes(".tether-upload-"))).toEqual([]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
