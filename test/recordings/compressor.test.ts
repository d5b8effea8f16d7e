import { beforeEach, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { silentLogger } from "../../src/log.ts";
import { exportCast, parseCast, replayOutput } from "../../src/recordings/asciicast.ts";
import { ChunkFormatError, decodeChunk, encodeChunk, type Mark } from "../../src/recordings/chunk-codec.ts";
import { InThreadCompressor, WorkerCompressor } from "../../src/recordings/compressor.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { closeAbandonedRecordings } from "../../src/recordings/recordings.ts";
import type { Store } from "../../src/store/store.ts";
import { useDb } from "../fixtures/harness.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import { capturingLogger, castLines, insertSession, utf8 } from "./helpers.ts";

const T = DEFAULT_TENANT_ID;

/** Raw bytes and marks of frames output at the given milliseconds. */
function frames(parts: Array<[ms: number, text: string | Uint8Array]>): { raw: Uint8Array; marks: Mark[] } {
  const bytes = parts.map(([, t]) => (typeof t === "string" ? utf8(t) : t));
  const raw = new Uint8Array(bytes.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of bytes) {
    raw.set(b, at);
    at += b.length;
  }
  return { raw, marks: parts.map(([ms], i) => [ms, bytes[i]!.length] as Mark) };
}

/** The event lines of chunks stored from these (raw, marks) pairs, read back in order. */
const stored = (...chunks: Array<{ raw: Uint8Array; marks: Mark[] }>) => castLines(chunks.map((c) => encodeChunk(c.raw, c.marks)));

describe("chunk codec", () => {
  test("event lines: times in seconds, JSON-escaped output, resizes in place", () => {
    const { raw, marks } = frames([[0, "a\x1b[0m"], [1500, "\"b\"\r\n"]]);
    const withResize: Mark[] = [...marks.slice(0, 1), [1200, 100, 40], ...marks.slice(1)];
    expect(stored({ raw, marks: withResize })).toBe('[0.000, "o", "a\\u001b[0m"]\n[1.200, "r", "100x40"]\n[1.500, "o", "\\"b\\"\\r\\n"]\n');
    expect(encodeChunk(raw, withResize).lastMs).toBe(1500);
  });

  test("a character split across chunks comes out whole in the later chunk; an unfinished one as U+FFFD at the last output's time", () => {
    const euro = utf8("€"); // 3 bytes
    const a = frames([[5, Uint8Array.of(0x41, euro[0]!)]]);
    const b = frames([[6, euro.subarray(1)], [7, Uint8Array.of(0xe2)]]);
    expect(stored(a, b)).toBe('[0.005, "o", "A"]\n[0.006, "o", "€"]\n[0.007, "o", "\uFFFD"]\n');
    // The unfinished character ends a chunk before the last one: it comes out at the end, never back in time.
    const c = frames([[5, "A"], [7, Uint8Array.of(0xe2)]]);
    expect(stored(c, { raw: new Uint8Array(0), marks: [[9, 100, 40]] })).toBe('[0.005, "o", "A"]\n[0.009, "r", "100x40"]\n[0.009, "o", "\uFFFD"]\n');
  });

  test("a frame of only the first bytes of a character is no event of its own", () => {
    const pile = utf8("💩");
    expect(stored(frames([[1, pile.subarray(0, 2)], [2, pile.subarray(2)]]))).toBe('[0.002, "o", "💩"]\n');
  });

  test("stored chunks are zstd of the raw output, smaller for terminal text; rows of schema v8 (zstd lines) and before (text) read as they were", () => {
    const line = "\x1b[32m2026-11-23T10:00:00Z\x1b[0m INFO worker processed job in 12 ms\r\n";
    const { raw, marks } = frames(Array.from({ length: 500 }, (_, i) => [i, line] as [number, string]));
    const enc = encodeChunk(raw, marks);
    expect(Array.from(enc.data.subarray(0, 4))).toEqual([0x28, 0xb5, 0x2f, 0xfd]); // the zstd frame magic
    expect(enc.data.length * 5).toBeLessThan(raw.length);
    expect(decodeChunk(Bun.zstdDecompressSync(enc.data))).toEqual({ raw, marks });
    const text = castLines([enc]);
    expect(text.split("\n").length).toBe(501);
    expect(castLines([{ data: Bun.zstdCompressSync(text) }])).toBe(text);
    expect(castLines([{ data: null, events: '[0.1, "o", "old"]' }])).toBe('[0.1, "o", "old"]\n');
    expect(encodeChunk(new Uint8Array(0), [])).toEqual({ data: new Uint8Array(0), lastMs: -1 });
    // A resize stays a resize whatever its numbers (0xffffffff rows would read as output).
    expect(decodeChunk(Bun.zstdDecompressSync(encodeChunk(new Uint8Array(0), [[1, 80, -1]]).data)).marks).toEqual([[1, 80, 0]]);
  });

  test("a corrupt stored chunk is a ChunkFormatError, never wrong output", () => {
    const { raw, marks } = frames([[0, "hello"], [3, "world"]]);
    const plain = Bun.zstdDecompressSync(encodeChunk(raw, marks).data);
    const corrupt = (edit: (b: Uint8Array) => Uint8Array) => () => castLines([{ data: Bun.zstdCompressSync(edit(plain.slice())) }]);
    expect(corrupt((b) => b.subarray(0, b.length - 1))).toThrow(ChunkFormatError); // output cut short
    expect(corrupt((b) => b.subarray(0, 20))).toThrow(ChunkFormatError); // marks cut short
    expect(corrupt((b) => (new DataView(b.buffer).setFloat64(8 + 16, Number.NaN, true), b))).toThrow(ChunkFormatError); // a time that is no number
    expect(corrupt((b) => (new DataView(b.buffer).setFloat64(8, 9, true), b))).toThrow(ChunkFormatError); // time going back
    expect(() => castLines([{ data: Uint8Array.of(1, 2, 3) }])).toThrow(ChunkFormatError); // not zstd
    expect(() => decodeChunk(utf8("[0.1, \"o\", \"x\"]\n"))).toThrow(ChunkFormatError);
  });

  test("the worker answers with what the calling thread would encode", async () => {
    const worker = new WorkerCompressor(silentLogger);
    const local = new InThreadCompressor();
    try {
      const text = "héllo → 日本語 🎉 ".repeat(50);
      const bytes = utf8(text);
      // Cut at odd byte offsets (splitting characters).
      const jobs: Array<[Uint8Array, Mark[]]> = [];
      for (let i = 0; i < 10; i++) {
        const part = bytes.slice(i * 97, i === 9 ? bytes.length : (i + 1) * 97);
        jobs.push([part, [[i, part.length], [i, 100 + i, 40]]]);
      }
      // Each chunk in three parts: two views of one buffer (sent once) and a buffer of its own.
      const split = (raw: Uint8Array) => {
        const a = raw.slice(0, 40);
        const b = new Uint8Array(raw.length + 8);
        b.set(raw.subarray(40), 8);
        return [a, b.subarray(8, 30), b.subarray(30, raw.length - 40 + 8)];
      };
      const sent = jobs.map(([raw]) => split(raw));
      const fromWorker = await Promise.all(jobs.map(([, marks], i) => worker.encode(sent[i]!, marks)));
      const fromHere = await Promise.all(jobs.map(([raw, marks]) => local.encode(split(raw), marks)));
      expect(fromWorker.map((c) => [c.data, c.lastMs])).toEqual(fromHere.map((c) => [c.data, c.lastMs]));
      // Handed over, not copied: the caller's buffers are detached.
      expect(sent.flat().every((p) => p.buffer.byteLength === 0)).toBe(true);
      const events = castLines(fromWorker).split("\n").filter(Boolean).map((l) => JSON.parse(l));
      expect(events.filter((e) => e[1] === "o").map((e) => e[2]).join("")).toBe(text);
      expect(events.filter((e) => e[1] === "r").length).toBe(10);
    } finally {
      worker.close();
    }
  });

  test("a chunk whose buffer cannot be handed to the thread is compressed on this one; the thread serves the next", async () => {
    const worker = new WorkerCompressor(silentLogger);
    try {
      const shared = new Uint8Array(new SharedArrayBuffer(5));
      shared.set(utf8("hello"));
      const marks: Mark[] = [[0, 5]];
      expect(await worker.encode([shared], marks)).toEqual(encodeChunk(utf8("hello"), marks));
      const next = utf8("world");
      expect(await worker.encode([next], marks)).toEqual(encodeChunk(utf8("world"), marks));
      expect(next.buffer.byteLength).toBe(0); // handed over: the thread is still in use
    } finally {
      worker.close();
    }
  });

  test.skipIf(process.platform !== "linux")("the worker thread runs at the lowest CPU priority (nice 19)", async () => {
    // Threads may end between the listing and the read (an earlier test's worker closing): skipped.
    const niceOf = (t: string) => {
      try {
        return Number(readFileSync(`/proc/self/task/${t}/stat`, "utf8").split(") ")[1]!.split(" ")[16]);
      } catch {
        return null;
      }
    };
    const nice = () => new Map(readdirSync("/proc/self/task").flatMap((t) => {
      const n = niceOf(t);
      return n === null ? [] : [[t, n] as const];
    }));
    const before = nice();
    const worker = new WorkerCompressor(silentLogger);
    try {
      await worker.encode([utf8("x")], [[0, 1]]);
      const started = [...nice()].filter(([tid]) => !before.has(tid)).map(([, n]) => n);
      expect(started).toContain(19);
      expect(nice().get(String(process.pid))).toBe(0); // the calling thread is left alone
    } finally {
      worker.close();
    }
  });
});

for (const flavor of FLAVORS) {
  describe(`recorder and its compressor (${flavor})`, () => {
    const ctx = useDb(flavor);
    let store: Store;
    beforeEach(async () => {
      store = await ctx.open();
    });

    test("chunks are stored compressed, with the time of their last event", async () => {
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000, chunkBytes: 4096 });
      try {
        const id = rec.start({ tenantId: T, sessionId: await insertSession(store), machineId: null, channel: 1, cols: 80, rows: 24 });
        const line = "INFO worker-3 processed job 12345 in 7 ms path=/var/lib/app/17/data\r\n";
        for (let i = 0; i < 200; i++) rec.output(id, utf8(line));
        await rec.end(id);
        const rows = await store.query<{ events: string | null; raw: number; stored: number; last_ms: number }>(
          "select events, octet_length(data) as stored, last_ms from recording_chunks where recording_id = $1 order by seq", [id]);
        expect(rows.length).toBeGreaterThan(1);
        for (const r of rows) {
          expect(r.events).toBeNull();
          expect(r.stored).toBeLessThan(4096 / 4);
          expect(r.last_ms).toBeGreaterThanOrEqual(0);
        }
        expect(replayOutput(parseCast((await exportCast(store, T, id))!))).toBe(line.repeat(200));
      } finally {
        await rec.stop();
      }
    });

    test("chunks written before schema v8 (plain event text) still export and still end an abandoned recording", async () => {
      const session = await insertSession(store);
      const id = crypto.randomUUID();
      await store.query("insert into recordings (id, tenant_id, session_id, channel, cols, rows, started_at) values ($1, $2, $3, 1, 80, 24, now() - interval '1 minute')", [id, T, session]);
      await store.query("insert into recording_chunks (recording_id, seq, events) values ($1, 1, $2)", [id, '[0.5, "o", "old "]\n[2.25, "o", "text"]\n']);
      expect(replayOutput(parseCast((await exportCast(store, T, id))!))).toBe("old text");
      await closeAbandonedRecordings(store, Date.now());
      const [row] = await store.query<{ s: number }>("select extract(epoch from ended_at - started_at)::float8 as s from recordings where id = $1", [id]);
      expect(row!.s).toBeCloseTo(2.25, 3);
      await expect(store.query("insert into recording_chunks (recording_id, seq) values ($1, 2)", [id])).rejects.toThrow(/recording_chunks_payload/);
    });

    test("the export around gaps and damage: a cut character is not glued across, times never go back, an open recording keeps its cut character", async () => {
      const session = await insertSession(store);
      const recording = async (ended: boolean, chunks: Array<[seq: number, row: { data?: Uint8Array; events?: string }]>) => {
        const id = crypto.randomUUID();
        await store.query(`insert into recordings (id, tenant_id, session_id, channel, cols, rows, started_at, ended_at) values ($1, $2, $3, 1, 80, 24, now(), ${ended ? "now()" : "null"})`, [id, T, session]);
        for (const [seq, row] of chunks) await store.query("insert into recording_chunks (recording_id, seq, data, events) values ($1, $2, $3, $4)", [id, seq, row.data ?? null, row.events ?? null]);
        return id;
      };
      const euro = utf8("€");
      const head = encodeChunk(Uint8Array.of(0x41, euro[0]!, euro[1]!), [[10, 3]]);
      const tail = encodeChunk(Uint8Array.of(euro[2]!, 0x42), [[20, 2]]);
      const damaged = { data: Uint8Array.of(1, 2, 3) };
      const events = async (id: string) => parseCast((await exportCast(store, T, id))!).events;
      // Chunk 2 was dropped: the € cut at its start comes out as U+FFFD, not glued to chunk 3's last byte.
      expect(await events(await recording(true, [[1, head], [3, tail]]))).toEqual([[0.01, "o", "A"], [0.01, "o", "\uFFFD"], [0.02, "o", "\uFFFDB"]]);
      // Chunk 2 is damaged: the same, and the marker stands where it was.
      const skipped = await events(await recording(true, [[1, head], [2, damaged], [3, tail]]));
      expect(skipped.map(([t, code]) => [t, code])).toEqual([[0.01, "o"], [0.01, "o"], [0.01, "m"], [0.02, "o"]]);
      // After rows of older schemas the marker keeps to their times (parseCast checks they never go back).
      const old = await events(await recording(true, [[1, { events: '[0.5, "o", "a"]\n' }], [2, { data: Bun.zstdCompressSync('[2.25, "o", "b"]\n') }], [3, damaged]]));
      expect(old.map(([t, code]) => [t, code])).toEqual([[0.5, "o"], [2.25, "o"], [2.25, "m"]]);
      // A recording still open: its last chunk may end mid-character, which is not yet an error.
      expect(await events(await recording(false, [[1, head]]))).toEqual([[0.01, "o", "A"]]);
      expect(await events(await recording(true, [[1, head]]))).toEqual([[0.01, "o", "A"], [0.01, "o", "\uFFFD"]]);
      // Decompressed garbage of an older layout is damage too, not event lines.
      expect((await events(await recording(true, [[1, { data: Bun.zstdCompressSync("not events") }]])))[0]![1]).toBe("m");
    });

    test("a burst is compressed after it ends, and at once beyond holdBytes; what is typed goes straight on", async () => {
      const inner = new InThreadCompressor();
      const calls: number[] = [];
      const spy = { encode: (raw: readonly Uint8Array[], marks: Mark[]) => (calls.push(raw.reduce((n, p) => n + p.length, 0)), inner.encode(raw, marks)), close() {} };
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000, chunkBytes: 1024, burstBytesPerSecond: 10_000, holdBytes: 8 * 1024, compressor: spy });
      try {
        const id = rec.start({ tenantId: T, sessionId: await insertSession(store), machineId: null, channel: 1, cols: 80, rows: 24 });
        const frame = utf8("y".repeat(512));
        // 6 KiB in a moment: a burst (10 KB/s is 1,000 bytes per 100 ms window); six chunks held.
        for (let i = 0; i < 12; i++) rec.output(id, frame);
        expect(calls).toEqual([]);
        // Over holdBytes (8 KiB): the oldest go to the compressor at once, the rest stay held.
        for (let i = 0; i < 8; i++) rec.output(id, frame);
        expect(calls.length).toBe(2);
        // Quiet for QUIET_MS (50 ms): the rest go.
        await Bun.sleep(120);
        expect(calls.length).toBe(10);
        expect(calls.every((n) => n === 1024)).toBe(true);
        // Typing (slow output) is no burst: each sealed chunk goes at once.
        await Bun.sleep(150);
        rec.output(id, utf8("k"));
        await rec.flush();
        expect(calls.length).toBe(11);
        await rec.end(id);
        expect(replayOutput(parseCast((await exportCast(store, T, id))!))).toBe("y".repeat(512 * 20) + "k");
      } finally {
        await rec.stop();
      }
    });

    test("a compressor that dies loses only what it held: later output is recorded on the calling thread", async () => {
      const { log, messages } = capturingLogger();
      const worker = new WorkerCompressor(log);
      const rec = new Recorder(store, log, { flushMs: 3_600_000, chunkBytes: 1024, compressor: worker });
      try {
        const id = rec.start({ tenantId: T, sessionId: await insertSession(store), machineId: null, channel: 1, cols: 80, rows: 24 });
        rec.output(id, utf8("before\r\n"));
        expect(await rec.flush()).toBe(true);
        // Kill the thread the way a crash inside it would end it.
        (worker as unknown as { worker: Worker }).worker.terminate();
        // "Later": once the compressor has noticed (its close event may take a while on a busy machine).
        await eventually(() => (worker as unknown as { fallback: unknown }).fallback !== null, 5_000, "the compressor noticing its thread's end");
        rec.output(id, utf8("after\r\n"));
        await rec.end(id);
        expect(replayOutput(parseCast((await exportCast(store, T, id))!))).toBe("before\r\nafter\r\n");
        expect(messages.some((m) => m.level === "error" && m.msg.includes("compressor thread failed"))).toBe(true);
      } finally {
        await rec.stop();
      }
    });
  });
}
