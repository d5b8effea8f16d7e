import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { silentLogger } from "../../src/log.ts";
import { castHeader, castSource, exportCast, parseCast, replayOutput } from "../../src/recordings/asciicast.ts";
import { CastLines, ChunkFormatError, encodeChunk, type Mark } from "../../src/recordings/chunk-codec.ts";
import { InThreadCompressor } from "../../src/recordings/compressor.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { getRecording } from "../../src/recordings/recordings.ts";
import type { Store } from "../../src/store/store.ts";
import { FLAVORS, useSharedStore } from "../helpers/stores.ts";
import { castLines, insertSession, utf8 } from "./helpers.ts";

setDefaultTimeout(60_000);

const T = DEFAULT_TENANT_ID;
const KiB = 1024;

/** A chunk of one output mark. */
const out = (ms: number, text: string) => encodeChunk(utf8(text), [[ms, utf8(text).length] as Mark]);

describe("the export's checks of stored chunks", () => {
  test("rows of older schemas are checked line by line; a bad one is a ChunkFormatError and leaves the reader as it was", () => {
    const bad = [
      "garbage",
      '[0.2, "o", "tw', // cut short
      '[0.1, "o"]',
      '{"t": 0.1}',
      '["0.1", "o", "a"]',
      '[-1, "o", "a"]',
      '[0.1, "x", "a"]',
      '[0.1, "o", 5]',
      '[0.1, "r", "wide"]',
      '[0.0001, "o", "a"]', // Tether wrote whole milliseconds
      '[0.2, "o", "a"]\n[0.1, "o", "b"]\n', // back in time within the chunk
      '[0.1, "o", "a"]\n\n[0.2, "o", "b"]\n',
      '[1e300, "o", "a"]\n',
    ];
    for (const events of bad) {
      const lines = new CastLines();
      expect(lines.chunk({ events: '[0.05, "o", "before"]\n' })).toBe('[0.05, "o", "before"]\n');
      expect(() => lines.chunk({ events })).toThrow(ChunkFormatError);
      // Schema v8 and v9 rows: the same lines, zstd-compressed.
      expect(() => lines.chunk({ data: Bun.zstdCompressSync(events) })).toThrow(ChunkFormatError);
      expect(lines.chunk({ events: '[0.3, "o", "after"]\n' })).toBe('[0.3, "o", "after"]\n');
    }
    // Good rows pass as they were stored, every code included.
    const good = '[0.100, "o", "a"]\n[0.100, "r", "100x40"]\n[0.2, "i", "ls\\r"]\n[0.25, "m", "chapter"]\n';
    expect(new CastLines().chunk({ events: good })).toBe(good);
    expect(new CastLines().chunk({ data: Bun.zstdCompressSync(good) })).toBe(good);
  });

  test("a time beyond the recording is damage: 1e300 always, past maxMs when the reader is told the recording's span", () => {
    expect(() => new CastLines().chunk(out(1e300, "a"))).toThrow(ChunkFormatError);
    const lines = new CastLines({ maxMs: 1000 });
    expect(lines.chunk(out(1000, "a"))).toBe('[1.000, "o", "a"]\n');
    expect(() => lines.chunk(out(1001, "b"))).toThrow(ChunkFormatError);
    expect(() => lines.chunk({ events: '[1.001, "o", "b"]\n' })).toThrow(ChunkFormatError);
  });

  test("a chunk that starts before the previous one ended is clamped to its end, not skipped: the output is all there and times never go back", () => {
    const lines = castLines([out(5000, "a"), encodeChunk(utf8("bc"), [[10, 1], [6000, 1]])]);
    expect(lines).toBe('[5.000, "o", "a"]\n[5.000, "o", "b"]\n[6.000, "o", "c"]\n');
    // Rows of older schemas alike: the late line is rewritten with the time, the others pass as stored.
    const old = castLines([{ events: '[5.000, "o", "a"]\n' }, { events: '[1.000, "o", "b"]\n[6.000, "o", "c"]\n' }]);
    expect(old).toBe('[5.000, "o", "a"]\n[5.000, "o", "b"]\n[6.000, "o", "c"]\n');
    for (const text of [lines, old]) expect(replayOutput(parseCast('{"version": 2, "width": 80, "height": 24}\n' + text))).toBe("abc");
  });
});

for (const flavor of FLAVORS) {
  describe(`the export (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));

    /** A recording row with these chunk rows, started `spanMs` before it ended (or before now, if open). */
    const recording = async (chunks: Array<[seq: number, row: { data?: Uint8Array; events?: string }]>, opts: { spanMs?: number; open?: boolean } = {}) => {
      const id = crypto.randomUUID();
      const ended = Date.now();
      const started = ended - (opts.spanMs ?? 10_000);
      await store.query(
        `insert into recordings (id, tenant_id, session_id, channel, cols, rows, started_at, ended_at)
         values ($1, $2, $3, 1, 80, 24, timestamptz 'epoch' + $4::bigint * interval '1 millisecond', timestamptz 'epoch' + $5::bigint * interval '1 millisecond')`,
        [id, T, await insertSession(store), started, opts.open ? null : ended],
      );
      for (const [seq, row] of chunks) await store.query("insert into recording_chunks (recording_id, seq, data, events) values ($1, $2, $3, $4)", [id, seq, row.data ?? null, row.events ?? null]);
      return id;
    };
    const exported = async (id: string) => {
      const corrupt: number[] = [];
      const text = (await exportCast(store, T, id, { onCorrupt: (seq) => corrupt.push(seq) }))!;
      return { cast: parseCast(text), corrupt };
    };

    test("a pull writes a chunk at a time until the reader has enough, and the event loop turns between big chunks; the cast is the same whatever the page and read-ahead", async () => {
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000, chunkBytes: 16 * KiB, compressor: new InThreadCompressor() });
      const id = rec.start({ tenantId: T, sessionId: await insertSession(store), machineId: null, channel: 1, cols: 80, rows: 24 });
      // Control characters: each escapes to six bytes of JSON, so a 16 KiB chunk is ~90 KiB of cast.
      const frame = new Uint8Array(16 * KiB);
      for (let i = 0; i < frame.length; i++) frame[i] = (i * 7919) & 0x1f;
      for (let i = 0; i < 24; i++) {
        rec.output(id, frame);
        if (i === 10) rec.resize(id, 100, 30);
      }
      rec.output(id, utf8("done €\r\n"));
      await rec.end(id);
      await rec.stop();
      const row = (await getRecording(store, T, id))!;
      const rows = await store.query<{ seq: number; events: string | null; data: Uint8Array | null }>("select seq, events, data from recording_chunks where recording_id = $1 order by seq", [id]);
      expect(rows.length).toBeGreaterThan(20);
      // What the export was before it went a chunk at a time: the header, then every chunk's lines in one go.
      const whole = castHeader(row, `session ${row.session_id}: terminal 1`) + castLines(rows);
      for (const opts of [{}, { pageSize: 1, readAheadBytes: 1 }, { pageSize: 7, readAheadBytes: 100 * KiB }, { pageSize: 1000, readAheadBytes: 64 * 1024 * KiB }]) {
        expect(await exportCast(store, T, id, opts)).toBe(whole);
      }
      const biggest = Math.max(...rows.map((c) => utf8(new CastLines().chunk(c)).length));
      expect(biggest).toBeGreaterThan(64 * KiB);

      // The stream's source, driven as a stream would: `desiredSize` is how much more the reader wants.
      let tick = 0;
      let ticking = true;
      const spin = () => {
        tick++;
        if (ticking) setImmediate(spin);
      };
      setImmediate(spin);
      const drive = async (wants: number, pageSize: number) => {
        const source = castSource(store, row, { pageSize, title: `session ${row.session_id}: terminal 1` });
        const pulls: Array<Array<{ bytes: number; tick: number }>> = [];
        let text = "";
        let closed = false;
        const decoder = new TextDecoder();
        while (!closed) {
          const pull: Array<{ bytes: number; tick: number }> = [];
          const controller = {
            desiredSize: wants,
            enqueue(b: Uint8Array) {
              pull.push({ bytes: b.length, tick });
              controller.desiredSize -= b.length;
              text += decoder.decode(b, { stream: true });
            },
            close: () => void (closed = true),
            error: (e: unknown) => { throw e; },
          };
          await source.pull(controller as unknown as ReadableStreamDefaultController<Uint8Array>);
          pulls.push(pull);
          expect(pulls.length).toBeLessThan(10_000);
        }
        return { pulls, text };
      };
      try {
        // A reader that wants 32 KiB at a time gets at most that and one chunk's lines more from a pull.
        const small = await drive(32 * KiB, 16);
        expect(small.text).toBe(whole);
        for (const p of small.pulls) expect(p.reduce((n, e) => n + e.bytes, 0)).toBeLessThanOrEqual(32 * KiB + biggest);
        expect(small.pulls.length).toBeGreaterThan(rows.length / 2);
        // A reader that wants everything, with every row in one page: each big chunk's lines are
        // written in a turn of the event loop of their own.
        const greedy = await drive(Number.MAX_SAFE_INTEGER, 1000);
        expect(greedy.text).toBe(whole);
        const writes = greedy.pulls.flat().slice(1, rows.length + 1); // after the header
        for (let i = 1; i < writes.length; i++) expect(writes[i]!.tick).toBeGreaterThan(writes[i - 1]!.tick);
      } finally {
        ticking = false;
      }
    });

    test("rows of older schemas: a line cut short or garbled is skipped with the marker, and the rest still plays", async () => {
      for (const row of [(t: string) => ({ events: t }), (t: string) => ({ data: Bun.zstdCompressSync(t) })]) {
        const id = await recording([[1, row('[0.1, "o", "one\\r\\n"]\n')], [2, row('[0.2, "o", "tw')], [3, row('[0.3, "o", "three\\r\\n"]\n')]]);
        const { cast, corrupt } = await exported(id);
        expect(corrupt).toEqual([2]);
        expect(replayOutput(cast)).toBe("one\r\nthree\r\n");
        expect(cast.events.map(([t, code]) => [t, code])).toEqual([[0.1, "o"], [0.1, "m"], [0.3, "o"]]);
      }
    });

    test("times: a chunk past the recording's span (plus a day) is skipped with the marker; one that starts before the previous one ended is clamped", async () => {
      const day = 86_400_000;
      const id = await recording([[1, out(1000, "a")], [2, out(2 * day, "x")], [3, out(1e300, "y")], [4, out(500, "b")], [5, out(9000, "c")]], { spanMs: 10_000 });
      const { cast, corrupt } = await exported(id);
      expect(corrupt).toEqual([2, 3]);
      expect(replayOutput(cast)).toBe("abc");
      expect(cast.events.map(([t, code]) => [t, code])).toEqual([[1, "o"], [1, "m"], [1, "m"], [1, "o"], [9, "o"]]);
      // While the recording is open its span runs to now.
      const open = await recording([[1, out(1000, "a")], [2, out(day + 5_000, "late, but within a day of now")], [3, out(3 * day, "x")]], { spanMs: 10_000, open: true });
      const live = await exported(open);
      expect(live.corrupt).toEqual([3]);
      expect(replayOutput(live.cast)).toBe("alate, but within a day of now");
    });
  });
}
