/**
 * How a recording chunk is stored, and how stored chunks become asciicast v2 event lines.
 *
 * Since schema v10 a chunk's `data` is the raw terminal output and its timing, zstd-compressed
 * as they came off the relay; turning them into event lines (UTF-8 decoding, JSON escaping) is
 * left to the export (`CastLines`). That keeps the write side's cost to the compression alone:
 * building the event lines cost about 2.5 times as much as compressing them (measured here:
 * 5.8 ms per MiB for lines and compression, 1.6 for compression), and recordings are written
 * far more often than they are read.
 *
 * The decompressed layout, little-endian:
 *
 *     "\0TR1"                 magic (4 bytes; no event text starts with a NUL)
 *     n: u32                  how many marks
 *     n × (ms: f64, a: u32, b: u32)
 *                             output of `a` bytes (b = 0xffffffff), or a resize to a × b
 *     raw bytes               the output, in mark order; their length is the sum of the `a`s
 *
 * Older rows are read too: `data` holding zstd-compressed event lines (schema v8, v9), and the
 * `events` text column (before v8).
 *
 * Pure functions, no I/O: the compressor's thread and the in-thread fallback share them, and
 * tests call them.
 */

/**
 * What happened in a chunk, in order: `[ms, len]` is `len` raw output bytes (the next ones of
 * the chunk) at `ms` after the recording started; `[ms, cols, rows]` is a resize.
 */
export type Mark = [ms: number, len: number] | [ms: number, cols: number, rows: number];

/** A stored chunk that cannot be read: corrupt, truncated, or not a chunk at all. */
export class ChunkFormatError extends Error {}

/**
 * The latest event time (ms from the start) any chunk may carry when the reader knows no
 * better: ten years. The export passes the recording's own span (castStream), far tighter; this
 * only keeps absurd times (a flipped exponent: 1e300) out of a cast a player must read.
 */
export const MAX_EVENT_MS = 10 * 365 * 86_400_000;

/** The compression level: zstd's fastest (≈ 1.6 ms/MiB, 7× on terminal output here). */
const ZSTD_LEVEL = 1;
const MAGIC = Uint8Array.of(0x00, 0x54, 0x52, 0x31);
const HEAD_BYTES = 8;
const MARK_BYTES = 16;
const OUTPUT = 0xffff_ffff;
const STREAM: TextDecodeOptions = { stream: true };

export interface EncodedChunk {
  /** The stored form; empty when the chunk has no output and no resize. */
  data: Uint8Array;
  /** The time of the chunk's last mark, ms from the start (−1: none). */
  lastMs: number;
}

/**
 * Where a chunk is laid out before compressing, reused: a fresh chunk-sized buffer per chunk
 * cost more than the copy into it (page faults), a third of the compression's time.
 */
let scratch = new Uint8Array(0);

/** A chunk as it is stored: `raw` (or its parts, in order) holds exactly the output bytes its `marks` count. */
export function encodeChunk(raw: Uint8Array | readonly Uint8Array[], marks: readonly Mark[]): EncodedChunk {
  if (marks.length === 0) return { data: new Uint8Array(0), lastMs: -1 };
  const head = HEAD_BYTES + marks.length * MARK_BYTES;
  const parts = raw instanceof Uint8Array ? [raw] : raw;
  let rawLength = 0;
  for (const p of parts) rawLength += p.length;
  if (scratch.length < head + rawLength) scratch = new Uint8Array(head + rawLength);
  const plain = scratch.subarray(0, head + rawLength);
  const view = new DataView(plain.buffer);
  plain.set(MAGIC);
  view.setUint32(4, marks.length, true);
  let at = HEAD_BYTES;
  for (const m of marks) {
    view.setFloat64(at, m[0], true);
    view.setUint32(at + 8, m[1], true);
    // A resize's rows stay below OUTPUT (the protocol allows 1–1000 anyway).
    view.setUint32(at + 12, m.length === 3 ? Math.min(Math.max(m[2], 0), OUTPUT - 1) : OUTPUT, true);
    at += MARK_BYTES;
  }
  for (const p of parts) {
    plain.set(p, at);
    at += p.length;
  }
  return { data: Bun.zstdCompressSync(plain, { level: ZSTD_LEVEL }), lastMs: marks[marks.length - 1]![0] };
}

/**
 * The marks and raw output of a chunk stored by `encodeChunk` (already decompressed). Times
 * must be numbers from 0 to `maxMs` that never go back within the chunk.
 */
export function decodeChunk(plain: Uint8Array, maxMs = MAX_EVENT_MS): { raw: Uint8Array; marks: Mark[] } {
  if (!isRawChunk(plain) || plain.length < HEAD_BYTES) throw new ChunkFormatError("not a recording chunk");
  const view = new DataView(plain.buffer, plain.byteOffset, plain.byteLength);
  const n = view.getUint32(4, true);
  const head = HEAD_BYTES + n * MARK_BYTES;
  if (head > plain.length) throw new ChunkFormatError(`a chunk of ${n} marks is cut short`);
  const marks: Mark[] = [];
  let bytes = 0;
  let last = 0;
  for (let at = HEAD_BYTES; at < head; at += MARK_BYTES) {
    const ms = view.getFloat64(at, true);
    const a = view.getUint32(at + 8, true);
    const b = view.getUint32(at + 12, true);
    if (!Number.isFinite(ms) || ms < 0 || ms < last) throw new ChunkFormatError("a chunk's times must be ≥ 0 and never go back");
    if (ms > maxMs) throw new ChunkFormatError(`a chunk's time ${ms} ms is beyond the recording (${maxMs} ms)`);
    last = ms;
    if (b === OUTPUT) {
      marks.push([ms, a]);
      bytes += a;
    } else marks.push([ms, a, b]);
  }
  if (bytes !== plain.length - head) throw new ChunkFormatError(`a chunk's marks count ${bytes} output bytes, it holds ${plain.length - head}`);
  return { raw: plain.subarray(head), marks };
}

function isRawChunk(plain: Uint8Array): boolean {
  return plain.length >= MAGIC.length && MAGIC.every((b, i) => plain[i] === b);
}

const seconds = (ms: number) => (ms / 1000).toFixed(3);

/**
 * A recording's event lines, from its stored chunks in sequence order. One per recording: its
 * UTF-8 decoder carries a character split across chunks over to the next one, and `end`
 * writes what is left of an unfinished character as U+FFFD, at the time of the last output.
 *
 * What a player needs is checked; a chunk that fails is a ChunkFormatError and leaves this
 * reader as it was (the export skips it, with a marker). Within a chunk, times must be numbers
 * from 0 to `maxMs` that never go back, and rows of older schemas must be asciicast event lines
 * as Tether wrote them. Across chunks, a chunk that starts before the previous one ended is
 * written with those times raised to the previous one's last (clamped, not skipped): which of
 * the two is wrong cannot be told, skipping would drop output that is intact, and one chunk
 * whose times are too late would make every later chunk look damaged.
 */
export class CastLines {
  private readonly decoder = new TextDecoder("utf-8");
  private readonly maxMs: number;
  /** The time of the last event line written (−1: none). */
  private lastMs = -1;
  /** The time of the last output bytes, written or not (an unfinished character's). */
  private outMs = -1;

  /** `maxMs`: the latest time an event may have, ms from the start (see MAX_EVENT_MS). */
  constructor(opts: { maxMs?: number } = {}) {
    this.maxMs = opts.maxMs ?? MAX_EVENT_MS;
  }

  /** The event lines of the next chunk (newline-terminated; "" when it holds none). */
  chunk(c: { data?: Uint8Array | null; events?: string | null }): string {
    if (!c.data || c.data.length === 0) return this.stored(c.events ?? "");
    let plain: Uint8Array;
    try {
      plain = Bun.zstdDecompressSync(c.data);
    } catch (err) {
      throw new ChunkFormatError(`a recording chunk does not decompress: ${err instanceof Error ? err.message : String(err)}`);
    }
    if (isRawChunk(plain)) {
      const { raw, marks } = decodeChunk(plain, this.maxMs);
      return this.events(raw, marks);
    }
    // Schema v8 and v9: the event lines themselves.
    const text = utf8.decode(plain);
    if (text.length > 0 && !text.startsWith("[")) throw new ChunkFormatError("a recording chunk holds neither output nor event lines");
    return this.stored(text);
  }

  /**
   * What is left of an unfinished character, as U+FFFD: when the recording is over, and before
   * a gap (chunks dropped, or damaged and skipped), so that it is not joined to bytes after it.
   */
  end(): string {
    const rest = this.decoder.decode();
    return rest.length === 0 ? "" : this.now("o", rest);
  }

  /** A marker event (asciicast "m"), at the time of the last event or output: what a player shows as a chapter. */
  marker(label: string): string {
    return this.now("m", label);
  }

  private now(code: "o" | "m", data: string): string {
    const ms = Math.max(this.lastMs, this.outMs, 0);
    this.lastMs = ms;
    return `[${seconds(ms)}, "${code}", ${JSON.stringify(data)}]\n`;
  }

  /**
   * Event lines as stored before schema v10, checked line by line (a row cut short, or not
   * event lines at all, would make the whole file unplayable): each a JSON `[time, code, data]`
   * with a time in whole milliseconds as Tether wrote them (`toFixed(3)`), never going back, a
   * known code and string data. Lines are passed on as stored, but for times clamped (see the
   * class comment).
   */
  private stored(text: string): string {
    if (text.length === 0) return "";
    const all = text.split("\n");
    if (all[all.length - 1] === "") all.pop();
    const events: Array<[ms: number, code: string, data: string]> = [];
    let prev = 0;
    for (let i = 0; i < all.length; i++) {
      const bad = (why: string) => new ChunkFormatError(`line ${i + 1} of a stored chunk: ${why}`);
      let e: unknown;
      try {
        e = JSON.parse(all[i]!);
      } catch {
        throw bad("not JSON");
      }
      if (!Array.isArray(e) || e.length !== 3) throw bad("not a [time, code, data] event");
      const [t, code, data] = e as [unknown, unknown, unknown];
      if (typeof t !== "number" || !Number.isFinite(t) || t < 0) throw bad("the time is not a number ≥ 0");
      // Whole milliseconds (the float product's error is far below a microsecond even at years):
      // the export's own lines (markers, clamped times) are in ms and must not fall before this.
      const ms = Math.round(t * 1000);
      if (Math.abs(t * 1000 - ms) > 1e-3) throw bad("the time is not in whole milliseconds");
      if (ms < prev) throw bad("the time goes back");
      if (ms > this.maxMs) throw bad(`the time ${t} s is beyond the recording`);
      if (typeof code !== "string" || !OLD_CODES.has(code)) throw bad(`unknown event code ${JSON.stringify(code)}`);
      if (typeof data !== "string") throw bad("the data is not a string");
      if (code === "r" && !/^\d+x\d+$/.test(data)) throw bad("a resize is not COLSxROWS");
      prev = ms;
      events.push([ms, code, data]);
    }
    let out = "";
    for (let i = 0; i < all.length; i++) {
      const [ms, code, data] = events[i]!;
      if (ms >= this.lastMs) {
        out += all[i] + "\n";
        this.lastMs = ms;
      } else out += `[${seconds(this.lastMs)}, ${JSON.stringify(code)}, ${JSON.stringify(data)}]\n`;
    }
    return out;
  }

  private events(raw: Uint8Array, marks: readonly Mark[]): string {
    let text = "";
    let at = 0;
    for (const m of marks) {
      // Never before the last line written (see the class comment); within a chunk times only grow.
      const ms = m[0] >= this.lastMs ? m[0] : this.lastMs;
      if (m.length === 3) {
        text += `[${seconds(ms)}, "r", "${m[1]}x${m[2]}"]\n`;
        this.lastMs = ms;
        continue;
      }
      const data = this.decoder.decode(raw.subarray(at, at + m[1]), STREAM);
      at += m[1];
      this.outMs = ms;
      // A frame that held only the first bytes of a character: it comes out with the next one.
      if (data.length === 0) continue;
      text += `[${seconds(ms)}, "o", ${JSON.stringify(data)}]\n`;
      this.lastMs = ms;
    }
    return text;
  }
}

/** Event codes of asciicast v2, as rows of older schemas may hold them. */
const OLD_CODES = new Set(["o", "r", "i", "m"]);

const utf8 = new TextDecoder();

/** The time (seconds) of the last event line in `text`, or null if it has none. */
export function lastEventTime(text: string): number | null {
  const all = text.trimEnd().split("\n");
  for (let i = all.length - 1; i >= 0; i--) {
    const m = /^\[\s*([0-9.eE+-]+)\s*,/.exec(all[i]!);
    if (m && Number.isFinite(Number(m[1]))) return Number(m[1]);
  }
  return null;
}
