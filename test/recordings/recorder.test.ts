import { afterAll, beforeAll, describe, expect, setDefaultTimeout, spyOn, test } from "bun:test";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { silentLogger } from "../../src/log.ts";
import { castHeader, exportCast, parseCast, replayOutput } from "../../src/recordings/asciicast.ts";
import { CastLines, type Mark } from "../../src/recordings/chunk-codec.ts";
import { InThreadCompressor } from "../../src/recordings/compressor.ts";
import { Recorder, type RecordingStart } from "../../src/recordings/recorder.ts";
import { closeAbandonedRecordings, getRecording } from "../../src/recordings/recordings.ts";
import type { Queryable, Store } from "../../src/store/store.ts";
import { createTestDb, eventually, FLAVORS, type TestDb } from "../helpers/stores.ts";
import { capturingLogger, FlakyStore, insertSession, utf8 } from "./helpers.ts";

setDefaultTimeout(60_000);

const HOUR = 3_600_000;
const T = DEFAULT_TENANT_ID;

/** A store whose transactions never finish: a database that hangs. */
class HungStore extends FlakyStore {
  override transaction<R>(_fn: (tx: Queryable) => Promise<R>): Promise<R> {
    this.attempts++;
    return new Promise<R>(() => {});
  }
}

/** A logger that keeps what it is given, fields and message. */
function recordingLogger() {
  const entries: Array<{ level: string; fields: Record<string, unknown>; msg: string }> = [];
  const log = silentLogger.child({});
  for (const level of ["trace", "debug", "info", "warn", "error", "fatal"] as const) {
    (log as any)[level] = (a: unknown, b?: unknown) =>
      entries.push(typeof a === "string" ? { level, fields: {}, msg: a } : { level, fields: a as Record<string, unknown>, msg: String(b) });
  }
  return { log, entries };
}

for (const flavor of FLAVORS) {
  describe(`recorder (${flavor})`, () => {
    let db: TestDb;
    let store: Store;
    const recorders: Recorder[] = [];
    const recorder = (s: Store = store, opts: ConstructorParameters<typeof Recorder>[2] = {}, log = silentLogger) => {
      const r = new Recorder(s, log, { flushMs: HOUR, ...opts });
      recorders.push(r);
      return r;
    };
    const begin = async (rec: Recorder, over: Partial<RecordingStart> = {}) => {
      const sessionId = over.sessionId ?? (await insertSession(store));
      return rec.start({ tenantId: T, sessionId, machineId: null, channel: 1, cols: 80, rows: 24, ...over });
    };
    const cast = async (id: string, pageSize?: number) => parseCast((await exportCast(store, T, id, { pageSize }))!);
    const chunks = async (id: string) => {
      const lines = new CastLines();
      const rows = await store.query<{ seq: number; events: string | null; data: Uint8Array | null }>("select seq, events, data from recording_chunks where recording_id = $1 order by seq", [id]);
      return rows.map((c) => ({ seq: c.seq, events: lines.chunk(c) }));
    };

    beforeAll(async () => {
      db = await createTestDb(flavor);
      store = await db.open();
    });
    afterAll(async () => {
      for (const r of recorders) await r.stop();
      await store?.close();
      await db?.destroy();
    });

    test("UTF-8 split across frames round-trips; resize events; times never go back", async () => {
      const rec = recorder();
      const id = await begin(rec);
      const parts = ["héllo wörld → 日本語 🎉\r\n", "\x1b[1;31mred\x1b[0m \"quoted\" \\ back\tslash\r\n", "ñ 𝄞 end"];
      // Byte by byte: every multibyte character is split across frames.
      for (const b of utf8(parts[0]!)) rec.output(id, Uint8Array.of(b));
      await Bun.sleep(15);
      rec.resize(id, 120, 40);
      const second = utf8(parts[1]! + parts[2]!);
      for (let i = 0; i < second.length; i += 3) {
        rec.output(id, second.subarray(i, i + 3));
        if (i % 12 === 0) await Bun.sleep(2);
      }
      await rec.end(id);

      const c = await cast(id);
      expect(c.header).toMatchObject({ version: 2, width: 80, height: 24 });
      expect(replayOutput(c)).toBe(parts.join(""));
      expect(replayOutput(c)).not.toContain("\uFFFD");
      const resizes = c.events.filter((e) => e[1] === "r");
      expect(resizes.map((e) => e[2])).toEqual(["120x40"]);
      // The resize sits between the first part's output and the second's.
      const at = c.events.findIndex((e) => e[1] === "r");
      expect(replayOutput({ header: c.header, events: c.events.slice(0, at) })).toBe(parts[0]!);
      for (let i = 1; i < c.events.length; i++) expect(c.events[i]![0]).toBeGreaterThanOrEqual(c.events[i - 1]![0]);
      // Milliseconds, as floats.
      const raw = (await exportCast(store, T, id))!.split("\n").slice(1, -1);
      for (const line of raw) expect(line).toMatch(/^\[\d+\.\d{3}, "[or]", /);
      const row = (await getRecording(store, T, id))!;
      expect(row.ended_at).not.toBeNull();
      expect(Number(row.bytes)).toBe(utf8(parts.join("")).length);
    });

    test("event times are seconds since the start, at millisecond precision", async () => {
      const rec = recorder();
      const id = await begin(rec, { at: Date.now() - 5_000 });
      rec.output(id, utf8("a"));
      await Bun.sleep(150);
      rec.output(id, utf8("b"));
      await Bun.sleep(150);
      rec.output(id, utf8("c"));
      await rec.end(id);
      const c = await cast(id);
      const [a, b, cc] = c.events.map((e) => e[0]);
      expect(a!).toBeGreaterThanOrEqual(5);
      expect(a!).toBeLessThan(6);
      expect(b! - a!).toBeGreaterThanOrEqual(0.14);
      expect(cc! - b!).toBeGreaterThanOrEqual(0.14);
      expect(c.header.timestamp).toBe(Math.floor(new Date((await getRecording(store, T, id))!.started_at).getTime() / 1000));
    });

    test("output within one millisecond is one event", async () => {
      const rec = recorder();
      const id = await begin(rec);
      // Synchronous frames: almost always one millisecond, at most a few.
      for (let i = 0; i < 200; i++) rec.output(id, utf8(`${i},`));
      await rec.end(id);
      const c = await cast(id);
      expect(c.events.length).toBeLessThan(20);
      expect(replayOutput(c)).toBe(Array.from({ length: 200 }, (_, i) => `${i},`).join(""));
    });

    test("chunks at chunkBytes without waiting for the tick; the export is the header and every chunk in order", async () => {
      const rec = recorder(store, { chunkBytes: 1024, flushAtBytes: 4096 });
      const id = await begin(rec);
      let written = "";
      for (let i = 0; i < 100; i++) {
        const frame = `line ${i} ${"x".repeat(180)}\r\n`;
        written += frame;
        rec.output(id, utf8(frame));
        if (i % 10 === 0) await Bun.sleep(1);
      }
      // No flush() and an hour-long tick: full chunks are written on their own.
      await eventually(async () => (await chunks(id)).length >= 10, 5_000, "chunks written");
      await rec.end(id);
      const stored = await chunks(id);
      expect(stored.map((c) => c.seq)).toEqual(stored.map((_, i) => i + 1));
      // A chunk closes once it holds chunkBytes: at most one frame's event beyond.
      for (const c of stored) expect(c.events.length).toBeLessThan(1024 + 300);
      const row = (await getRecording(store, T, id))!;
      expect(row.chunks).toBe(stored.length);
      expect(Number(row.bytes)).toBe(written.length);
      const text = (await exportCast(store, T, id, { pageSize: 3 }))!;
      expect(text).toBe(castHeader(row, `session ${row.session_id}: terminal 1`) + stored.map((c) => c.events).join(""));
      expect(replayOutput(parseCast(text))).toBe(written);
    });

    test("output the caller gives up is not copied: its buffer goes to the compressor thread as it is, recorded as if copied", async () => {
      const rec = recorder(store, { chunkBytes: 64 * 1024 });
      const id = await begin(rec);
      let written = "";
      // As the relay gives it: the payload of a frame whose first five bytes are the header.
      const frame = (text: string) => {
        const f = new Uint8Array(5 + text.length);
        f.set(utf8(text), 5);
        written += text;
        return f.subarray(5);
      };
      const given: Uint8Array[] = [];
      const small: Uint8Array[] = [];
      const notGiven: Uint8Array[] = [];
      for (let i = 0; i < 40; i++) {
        const big = frame(`bulk ${i} ${"b".repeat(9000)}\r\n`);
        given.push(big);
        rec.output(id, big, true);
        // Small output, given or not, and large output not given: copied (about 100 KiB of it,
        // more than one copy buffer per chunk).
        const typed = frame(`typed ${i} ${"t".repeat(2000)}\r\n`);
        small.push(typed);
        rec.output(id, typed, true);
        const kept = frame(`kept ${i} ${"k".repeat(5000)}\r\n`);
        notGiven.push(kept);
        rec.output(id, kept);
      }
      await rec.end(id);
      expect(replayOutput(await cast(id))).toBe(written);
      expect(Number((await getRecording(store, T, id))!.bytes)).toBe(written.length);
      // Handed over (detached here), not copied; the rest is the caller's as it was.
      expect(given.every((p) => p.buffer.byteLength === 0)).toBe(true);
      expect([...small, ...notGiven].every((p) => p.buffer.byteLength > 0 && p[0] !== 0)).toBe(true);
    });

    test("chunks by time: each tick writes what is pending", async () => {
      const rec = recorder(store, { flushMs: 50 });
      const id = await begin(rec);
      rec.output(id, utf8("first"));
      await eventually(async () => (await chunks(id)).length === 1, 5_000, "first chunk");
      rec.output(id, utf8("second"));
      await eventually(async () => (await chunks(id)).length === 2, 5_000, "second chunk");
      expect(replayOutput(await cast(id))).toBe("firstsecond");
      expect((await getRecording(store, T, id))!.ended_at).toBeNull();
    });

    test("one flush writes every recording in one transaction", async () => {
      const flaky = new FlakyStore(store);
      const rec = recorder(flaky);
      const ids = [await begin(rec), await begin(rec, { channel: 2 }), await begin(rec, { channel: 3 })];
      for (const id of ids) rec.output(id, utf8(`hello ${id}`));
      const before = flaky.attempts;
      expect(await rec.flush()).toBe(true);
      expect(flaky.attempts - before).toBe(1);
      for (const id of ids) expect(replayOutput(await cast(id))).toBe(`hello ${id}`);
    });

    test("a crash keeps what was flushed; the next process ends the recording at its last event", async () => {
      const crashDb = await createTestDb(flavor);
      try {
        const first = await crashDb.open();
        const session = await insertSession(first);
        const rec = recorder(first);
        const id = rec.start({ tenantId: T, sessionId: session, machineId: null, channel: 7, cols: 100, rows: 30 });
        rec.output(id, utf8("flushed before the crash\r\n"));
        await Bun.sleep(20);
        rec.output(id, utf8("also flushed\r\n"));
        expect(await rec.flush()).toBe(true);
        rec.output(id, utf8("never flushed\r\n"));
        // The process dies: nothing more reaches the database (no stop(), no flush).
        await first.close();

        const second = await crashDb.open();
        try {
          const text = (await exportCast(second, T, id))!;
          const c = parseCast(text);
          expect(c.header).toMatchObject({ width: 100, height: 30 });
          expect(replayOutput(c)).toBe("flushed before the crash\r\nalso flushed\r\n");
          const row = (await getRecording(second, T, id))!;
          expect(row.ended_at).toBeNull();
          expect(await closeAbandonedRecordings(second, Date.now())).toBe(1);
          const closed = (await getRecording(second, T, id))!;
          const duration = (new Date(closed.ended_at!).getTime() - new Date(closed.started_at).getTime()) / 1000;
          expect(duration).toBeCloseTo(c.events[c.events.length - 1]![0], 2);
          expect(await closeAbandonedRecordings(second, Date.now())).toBe(0);
        } finally {
          await second.close();
        }
      } finally {
        await crashDb.destroy();
      }
    });

    test("a failing database never reaches output(); the data is retried and written later", async () => {
      const flaky = new FlakyStore(store);
      const { log, messages } = capturingLogger();
      const rec = recorder(flaky, { flushMs: 40, chunkBytes: 512 }, log);
      const id = await begin(rec);
      flaky.down = true;
      let written = "";
      for (let i = 0; i < 50; i++) {
        const frame = `out ${i} ${"y".repeat(40)}\n`;
        written += frame;
        expect(() => rec.output(id, utf8(frame))).not.toThrow();
        if (i % 10 === 0) await Bun.sleep(30);
      }
      const failed = flaky.attempts;
      await Bun.sleep(200);
      expect(flaky.attempts).toBeGreaterThan(failed);
      expect(await rec.flush()).toBe(false);
      expect((await store.query("select 1 from recordings where id = $1", [id])).length).toBe(0);
      flaky.down = false;
      await eventually(async () => (await getRecording(store, T, id))?.bytes === written.length, 5_000, "retried chunks");
      await rec.end(id);
      expect(replayOutput(await cast(id))).toBe(written);
      expect(messages.filter((m) => m.level === "warn" && m.msg.includes("flush failed")).length).toBe(1);
      expect(messages.some((m) => m.level === "info" && m.msg.includes("succeeded again"))).toBe(true);
      expect(rec.stats().failedFlushes).toBeGreaterThan(1);
    });

    test("while the database is down, pending output is capped: the oldest is dropped, with one warning", async () => {
      const flaky = new FlakyStore(store);
      const { log, messages } = capturingLogger();
      const rec = recorder(flaky, { chunkBytes: 1024, maxPendingBytes: 4096 }, log);
      const id = await begin(rec);
      flaky.down = true;
      const frames = Array.from({ length: 100 }, (_, i) => `frame ${String(i).padStart(3, "0")} ${"z".repeat(100)}\n`);
      for (const f of frames) rec.output(id, utf8(f));
      expect(await rec.flush()).toBe(false);
      expect(rec.stats().pendingBytes).toBeLessThanOrEqual(4096 + 1024);
      expect(rec.stats().droppedBytes).toBeGreaterThan(0);
      flaky.down = false;
      await rec.end(id);
      const out = replayOutput(await cast(id));
      // What survived is the newest output, whole frames, in order, up to the last one.
      expect(out.endsWith(frames[99]!)).toBe(true);
      expect(out.startsWith(frames[0]!)).toBe(false);
      expect(frames.join("").endsWith(out)).toBe(true);
      expect(messages.filter((m) => m.level === "warn" && m.msg.includes("dropping the oldest")).length).toBe(1);
      const seqs = (await chunks(id)).map((c) => c.seq);
      expect(seqs[0]).toBeGreaterThan(1); // the gap the dropped chunks left
    });

    test("a recording waits for its session row, and is given up if it never comes", async () => {
      const { log, messages } = capturingLogger();
      const rec = recorder(store, { orphanMs: 150 }, log);
      const later = crypto.randomUUID();
      const waiting = rec.start({ tenantId: T, sessionId: later, machineId: null, channel: 1, cols: 80, rows: 24 });
      const never = rec.start({ tenantId: T, sessionId: crypto.randomUUID(), machineId: null, channel: 1, cols: 80, rows: 24 });
      const fine = await begin(rec);
      for (const id of [waiting, never, fine]) rec.output(id, utf8("data"));
      expect(await rec.flush()).toBe(false);
      // The others are not held up by the missing sessions.
      expect(replayOutput(await cast(fine))).toBe("data");
      expect(await getRecording(store, T, waiting)).toBeNull();
      await insertSession(store, { id: later });
      await Bun.sleep(200);
      rec.output(waiting, utf8(" more"));
      await rec.flush();
      expect(replayOutput(await cast(waiting))).toBe("data more");
      expect(await getRecording(store, T, never)).toBeNull();
      expect(messages.some((m) => m.level === "warn" && m.msg.includes("never appeared"))).toBe(true);
      expect(await rec.flush()).toBe(true);
    });

    test("stop() ends every open recording and writes it; later output is ignored", async () => {
      const rec = recorder();
      const id = await begin(rec);
      rec.output(id, utf8("until shutdown"));
      await rec.stop();
      rec.output(id, utf8("after"));
      expect(rec.stats().live).toBe(0);
      const row = (await getRecording(store, T, id))!;
      expect(row.ended_at).not.toBeNull();
      expect(replayOutput(await cast(id))).toBe("until shutdown");
    });

    test("one recording's burst holds back only its own chunks: another's are written by the next tick meanwhile", async () => {
      const inner = new InThreadCompressor();
      const encoded: string[] = [];
      const spy = { encode: (raw: readonly Uint8Array[], marks: Mark[]) => (encoded.push(new TextDecoder().decode(Buffer.concat(raw))), inner.encode(raw, marks)), close() {} };
      const rec = recorder(store, { flushMs: 100, chunkBytes: 1024, burstBytesPerSecond: 10_000, holdBytes: 1024 * 1024, compressor: spy });
      const bulk = await begin(rec);
      const typed = await begin(rec);
      const rows = async (id: string) => (await store.query("select 1 from recording_chunks where recording_id = $1", [id])).length;
      // The burst goes on as long as the test wants: the monotonic clock stands still at its last frame.
      const real = performance.now.bind(performance);
      const frozen = real();
      const clock = spyOn(performance, "now").mockImplementation(() => frozen);
      const frame = utf8("y".repeat(512));
      try {
        // 6 KiB at once (10 KB/s is 1,000 bytes per 100 ms window): a burst, six chunks held.
        for (let i = 0; i < 12; i++) rec.output(bulk, frame);
        // Someone typing in another terminal meanwhile.
        rec.output(typed, utf8("ls\r\n"));
        // The next tick (100 ms) seals it and it is written: not held up by the other's burst.
        await eventually(async () => (await rows(typed)) > 0, 5_000, "the typed recording's chunk");
        expect(encoded).toEqual(["ls\r\n"]);
        expect(await rows(bulk)).toBe(0);
        rec.output(typed, utf8("pwd\r\n"));
        await eventually(async () => (await rows(typed)) > 1, 5_000, "the typed recording's second chunk");
        expect(await rows(bulk)).toBe(0);
      } finally {
        clock.mockRestore();
      }
      // Quiet for QUIET_MS (50 ms) now that time moves again: the burst's chunks go too.
      await eventually(() => encoded.length === 2 + 6, 5_000, "the burst's chunks compressed after it");
      await Promise.all([rec.end(bulk), rec.end(typed)]);
      expect(replayOutput(await cast(bulk))).toBe("y".repeat(512 * 12));
      expect(replayOutput(await cast(typed))).toBe("ls\r\npwd\r\n");
    });

    test("stop() gives up after stopTimeoutMs when the database or the compressor hangs: logs what is lost and returns", async () => {
      const hung = async (rec: Recorder, entries: ReturnType<typeof recordingLogger>["entries"]) => {
        const id = await begin(rec);
        rec.output(id, utf8("x".repeat(1000)));
        const t0 = Date.now();
        const outcome = await Promise.race([rec.stop().then(() => "returned"), Bun.sleep(5_000).then(() => "still waiting")]);
        expect(outcome).toBe("returned");
        expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
        const errors = entries.filter((e) => e.level === "error");
        expect(errors.length).toBe(1);
        expect(errors[0]!.msg).toContain("unwritten output is lost");
        expect(errors[0]!.fields).toMatchObject({ recordings: 1, pendingBytes: 1000, timeoutMs: 200 });
      };
      // A database that never answers (the chunk is inside the hung transaction).
      const db = recordingLogger();
      const store1 = new HungStore(store);
      await hung(recorder(store1, { stopTimeoutMs: 200 }, db.log), db.entries);
      expect(store1.attempts).toBeGreaterThan(0);
      // A compressor that never answers (the chunk is still compressing).
      const cmp = recordingLogger();
      const stuck = { encode: () => new Promise<never>(() => {}), close() {} };
      await hung(recorder(store, { stopTimeoutMs: 200, compressor: stuck }, cmp.log), cmp.entries);
    });

    test("a recording ends on the clock its events are timed by: a wall clock stepped meanwhile does not move the end", async () => {
      const rec = recorder();
      const ended = await begin(rec);
      const stopped = await begin(rec);
      const explicit = await begin(rec);
      const late = await begin(rec);
      for (const id of [ended, stopped]) rec.output(id, utf8("before "));
      await Bun.sleep(200);
      for (const id of [ended, stopped]) rec.output(id, utf8("after"));
      const real = Date.now.bind(Date);
      const clock = spyOn(Date, "now");
      try {
        // The wall clock jumps an hour ahead: end() without a time.
        clock.mockImplementation(() => real() + HOUR);
        await rec.end(ended);
        // An explicit time is still honoured, and never before the start.
        const startedAt = async (id: string) => new Date((await getRecording(store, T, id))!.started_at).getTime();
        await rec.end(explicit, (await startedAt(explicit)) + 1234);
        await rec.end(late, (await startedAt(late)) - HOUR);
        // The wall clock goes an hour back: stop() ends the rest.
        clock.mockImplementation(() => real() - HOUR);
        await rec.stop();
      } finally {
        clock.mockRestore();
      }
      const duration = async (id: string) =>
        (await store.query<{ s: number }>("select extract(epoch from ended_at - started_at)::float8 as s from recordings where id = $1", [id]))[0]!.s;
      for (const id of [ended, stopped]) {
        const c = await cast(id);
        const last = c.events[c.events.length - 1]![0];
        expect(last).toBeGreaterThanOrEqual(0.19);
        const d = await duration(id);
        expect(d).toBeGreaterThanOrEqual(last);
        expect(d - last).toBeLessThan(1);
      }
      expect(await duration(explicit)).toBeCloseTo(1.234, 3);
      expect(await duration(late)).toBe(0);
    });

    test("a recording deleted while live (its session deleted) stops being recorded", async () => {
      const rec = recorder();
      const session = await insertSession(store);
      const id = await begin(rec, { sessionId: session });
      rec.output(id, utf8("one"));
      expect(await rec.flush()).toBe(true);
      await store.query("delete from sessions where id = $1", [session]);
      rec.output(id, utf8("two"));
      expect(await rec.flush()).toBe(true);
      expect(rec.stats().live).toBe(0);
      expect((await store.query("select 1 from recording_chunks where recording_id = $1", [id])).length).toBe(0);
    });
  });
}
