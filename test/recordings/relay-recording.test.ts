import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { silentLogger } from "../../src/log.ts";
import { encode } from "../../src/protocol/agent.ts";
import { dataFrame } from "../../src/protocol/frames.ts";
import { exportCast, parseCast, replayOutput } from "../../src/recordings/asciicast.ts";
import { InThreadCompressor } from "../../src/recordings/compressor.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { Relay } from "../../src/relay/relay.ts";
import type { Store } from "../../src/store/store.ts";
import { FLAVORS, useSharedStore } from "../helpers/stores.ts";
import { insertSession, utf8 } from "./helpers.ts";

setDefaultTimeout(60_000);

const T = DEFAULT_TENANT_ID;

/** The relay's side of a terminal's life, with a real recorder: which recordings it leaves. */
for (const flavor of FLAVORS) {
  describe(`the relay's terminal recordings (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));

    const setup = async (opts: { agent: boolean }) => {
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000, compressor: new InThreadCompressor() });
      const relay = new Relay({ send: () => {}, ask: async () => ({ reply: { ok: true } }) } as never, rec, silentLogger);
      const sessionId = await insertSession(store);
      if (opts.agent) relay.addAgent("conn", { send: () => 1, buffered: () => 0, close: () => {} }, null);
      relay.attach(sessionId, { tenantId: T, machineId: null }, opts.agent ? "conn" : null);
      let channel = 0;
      const open = (cols = 80, rows = 24) => {
        channel++;
        relay.openRoute({ sessionId, tenantId: T, machineId: null, conn: opts.agent ? "conn" : null, viewerId: "v", req: `r${channel}`, open: { t: "ch.open", session: sessionId, channel, type: "term", cols, rows } });
        return channel;
      };
      const fromAgent = (m: object) => expect(relay.fromAgent("conn", encode(m as never))).toBe(true);
      const recordings = async () => {
        await rec.flush();
        return store.query<{ id: string; channel: number; cols: number; rows: number; bytes: number; ended_at: Date | null }>(
          "select id::text as id, channel::int as channel, cols, rows, bytes::int as bytes, ended_at from recordings where session_id = $1 order by channel", [sessionId]);
      };
      return { rec, relay, sessionId, open, fromAgent, recordings };
    };

    test("a terminal the agent never has leaves no recording: no agent attached, or its PTY failed to start", async () => {
      const none = await setup({ agent: false });
      none.open();
      expect(await none.recordings()).toEqual([]);
      await none.rec.stop();

      const failed = await setup({ agent: true });
      const ch = failed.open();
      failed.fromAgent({ t: "ch.closed", channel: ch, reason: "error", error: { code: "SPAWN_FAILED", message: "no shell" } });
      // A resize asked for meanwhile does not make one either.
      const ch2 = failed.open();
      await failed.relay.fromViewer({ viewerId: "v", sessionId: failed.sessionId, userId: "u", name: "u", access: "control", send: () => 1, buffered: () => 0, close: () => {} }, encode({ t: "term.resize", channel: ch2, cols: 100, rows: 30 } as never));
      failed.fromAgent({ t: "ch.closed", channel: ch2, reason: "error", error: { code: "SPAWN_FAILED", message: "no shell" } });
      expect(await failed.recordings()).toEqual([]);
      await failed.rec.stop();
    });

    test("a terminal the agent confirms is recorded from its opening: output right after ch.opened, a resize from before it", async () => {
      const s = await setup({ agent: true });
      const viewer = { viewerId: "v", sessionId: s.sessionId, userId: "u", name: "u", access: "control" as const, send: () => 1, buffered: () => 0, close: () => {} };
      s.relay.addViewer({ tenantId: T, machineId: null }, viewer);
      const ch = s.open(80, 24);
      await s.relay.fromViewer(viewer, encode({ t: "term.resize", channel: ch, cols: 100, rows: 30 } as never));
      await Bun.sleep(50);
      // The PTY's first output comes in the same read as ch.opened.
      s.fromAgent({ t: "ch.opened", channel: ch });
      s.relay.fromAgent("conn", dataFrame(ch, utf8("$ ")));
      s.fromAgent({ t: "ch.closed", channel: ch, reason: "exit", exit_code: 0 });

      // And one whose ch.opened was lost with a connection: its output shows the terminal runs.
      const lost = s.open();
      s.relay.fromAgent("conn", dataFrame(lost, utf8("hello")));
      s.fromAgent({ t: "ch.closed", channel: lost, reason: "exit", exit_code: 0 });

      const rows = await s.recordings();
      expect(rows.map((r) => [r.channel, r.cols, r.rows, r.bytes, r.ended_at !== null])).toEqual([[ch, 80, 24, 2, true], [lost, 80, 24, 5, true]]);
      const cast = parseCast((await exportCast(store, T, rows[0]!.id))!);
      expect(cast.header).toMatchObject({ width: 80, height: 24 });
      expect(cast.events.map(([, code, data]) => [code, data])).toEqual([["r", "100x30"], ["o", "$ "]]);
      // Timed from when the channel opened, as before: the output came 50 ms in.
      expect(cast.events[1]![0]).toBeGreaterThanOrEqual(0.04);
      expect(replayOutput(parseCast((await exportCast(store, T, rows[1]!.id))!))).toBe("hello");
      await s.rec.stop();
    });

    test("each terminal frame is delivered to every viewer before the recorder takes it, and the recorder is given it (no copy)", async () => {
      const s = await setup({ agent: true });
      const got: string[][] = [[], []];
      const viewers = got.map((into, i) => ({
        viewerId: `v${i}`, sessionId: s.sessionId, userId: "u", name: "u", access: "control" as const,
        send: (f: Uint8Array) => (f[0] === 0 && into.push(Buffer.from(f.subarray(5)).toString()), f.length), buffered: () => 0, close: () => {},
      }));
      for (const v of viewers) s.relay.addViewer({ tenantId: T, machineId: null }, v);
      const ch = s.open();
      s.fromAgent({ t: "ch.opened", channel: ch });
      // The recorder hands a given frame's buffer to its compressor thread, possibly at once:
      // here at once, as a transfer would (detaching it).
      const output = s.rec.output.bind(s.rec);
      let given = 0;
      s.rec.output = (id: string, bytes: Uint8Array, owned?: boolean) => {
        const text = Buffer.from(bytes).toString();
        if (owned) {
          given++;
          structuredClone(bytes.buffer, { transfer: [bytes.buffer as ArrayBuffer] });
        }
        return output(id, utf8(text));
      };
      const lines = ["small\r\n", `${"big ".repeat(2000)}\r\n`];
      for (const line of lines) s.relay.fromAgent("conn", dataFrame(ch, utf8(line)));
      expect(got).toEqual([lines, lines]);
      expect(given).toBe(2);
      s.fromAgent({ t: "ch.closed", channel: ch, reason: "exit", exit_code: 0 });
      const [row] = await s.recordings();
      expect(replayOutput(parseCast((await exportCast(store, T, row!.id))!))).toBe(lines.join(""));
      await s.rec.stop();
    });
  });
}
