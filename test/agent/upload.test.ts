import { expect, spyOn, test } from "bun:test";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import * as fsp from "node:fs/promises";
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
    backlog: () => 0,
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

/**
 * Holds upload.ts's final rename (of a file in `dir`) until `release`: `started` resolves once the
 * rename has been called, i.e. the upload is past its last check and committing. bun:test's
 * spyOn on the module namespace replaces the binding upload.ts imported; `calls` shows it did.
 * `outcome` "fail" makes the rename reject as a real one would (EACCES) instead of renaming.
 */
function holdRename(dir: string, outcome: "ok" | "fail") {
  const real = fsp.rename;
  let started!: () => void;
  let release!: () => void;
  const startedP = new Promise<void>((r) => (started = r));
  const gate = new Promise<void>((r) => (release = r));
  const calls: Array<[string, string]> = [];
  const spy = spyOn(fsp, "rename").mockImplementation(async (from, to) => {
    if (!String(from).startsWith(dir)) return real(from, to);
    calls.push([String(from), String(to)]);
    started();
    await gate;
    if (outcome === "fail") throw Object.assign(new Error(`EACCES: permission denied, rename '${from}' -> '${to}'`), { code: "EACCES", errno: -13, syscall: "rename" });
    return real(from, to);
  });
  return { started: startedP, release, calls, restore: () => spy.mockRestore() };
}

const temps = (dir: string) => readdirSync(dir).filter((f) => f.includes(".tether-upload-"));

/** Waits (up to 10 s) for `ok`; the caller's expect then says what did not happen. */
async function until(ok: () => boolean): Promise<void> {
  for (const deadline = Date.now() + 10_000; !ok() && Date.now() < deadline; ) await Bun.sleep(1);
}

/** An upload of `payload` over a target holding "old contents\n", held in its rename by `hold`. */
async function heldInRename(dir: string, hold: ReturnType<typeof holdRename>, payload: Uint8Array) {
  const name = "target.txt";
  writeFileSync(join(dir, name), "old contents\n");
  const u = upload(dir, name, payload.byteLength);
  await until(() => u.sent.some((m) => m.t === "ch.opened"));
  u.channel.input(payload);
  u.channel.eof();
  await Promise.race([hold.started, until(() => u.ended() !== null)]); // ended: the expects below say how
  expect(u.ended()).toBeNull();
  expect(hold.calls).toEqual([[expect.stringContaining(".target.txt.tether-upload-"), join(dir, name)]]);
  return { u, target: join(dir, name) };
}

/**
 * Runs `check` with an upload of "new contents\n" over "old contents\n" held in its rename
 * (which then succeeds or fails, `outcome`); the rename spy and the temp dir are undone after.
 */
async function withRenameHeld(outcome: "ok" | "fail", check: (t: { u: Awaited<ReturnType<typeof heldInRename>>["u"]; target: string; dir: string; hold: ReturnType<typeof holdRename>; payload: Uint8Array }) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "tether-upload-"));
  const payload = new TextEncoder().encode("new contents\n");
  const hold = holdRename(dir, outcome);
  try {
    const { u, target } = await heldInRename(dir, hold, payload);
    await check({ u, target, dir, hold, payload });
  } finally {
    hold.release();
    hold.restore();
    rmSync(dir, { recursive: true, force: true });
  }
}

for (const reason of [undefined, "session_ended", "agent_lost"] as const) {
  test(`an upload stopped (${reason ?? "ch.close"}) while its rename runs, which succeeds, reports eof and the new bytes are in place`, () =>
    withRenameHeld("ok", async ({ u, target, dir, hold, payload }) => {
      u.channel.stop(reason);
      u.channel.stop(reason); // a second stop changes nothing either
      // The rename may still fail: no outcome can be reported before it returns.
      const beforeRenameReturned = u.ended();
      hold.release();
      await until(() => u.ended() !== null && temps(dir).length === 0);
      expect({ beforeRenameReturned, end: u.ended(), now: readFileSync(target, "utf8"), temps: temps(dir) }).toEqual({
        beforeRenameReturned: null,
        end: { reason: "eof", bytes: payload.byteLength },
        now: "new contents\n",
        temps: [],
      });
    }));
}

test("an upload stopped while its rename runs, which fails, reports the rename's error and leaves the target and no temp file", () =>
  withRenameHeld("fail", async ({ u, target, dir, hold }) => {
    u.channel.stop(undefined);
    const beforeRenameReturned = u.ended();
    hold.release();
    await until(() => u.ended() !== null && temps(dir).length === 0);
    expect({ beforeRenameReturned, end: u.ended(), now: readFileSync(target, "utf8"), temps: temps(dir) }).toEqual({
      beforeRenameReturned: null,
      end: { reason: "error", error: { code: "EACCES", message: expect.stringContaining("EACCES") } },
      now: "old contents\n",
      temps: [],
    });
  }));

test("data after ch.eof, while the rename runs, does not end the upload 'too_large' with the target replaced anyway", () =>
  withRenameHeld("ok", async ({ u, target, dir, hold, payload }) => {
    // The relay forwards an uploader's data frames after its ch.eof, and so does the host.
    u.channel.input(new TextEncoder().encode("x"));
    hold.release();
    await until(() => u.ended() !== null && temps(dir).length === 0);
    expect({ end: u.ended(), now: readFileSync(target, "utf8"), temps: temps(dir) }).toEqual({
      end: { reason: "eof", bytes: payload.byteLength },
      now: "new contents\n",
      temps: [],
    });
  }));
