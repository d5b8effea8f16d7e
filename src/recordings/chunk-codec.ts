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
  /** The raw buffer, handed back for reuse (allocating one per chunk costs more than the relay's copy). */
  raw?: ArrayBuffer;
}

/**
 * Where a chunk is laid out before compressing, reused: a fresh chunk-sized buffer per chunk
 * cost more than the copy into it (page faults), a third of the compression's time.
 */
let scratch = new Uint8Array(0);

/** A chunk as it is stored: `raw` holds exactly the output bytes its `marks` count. */
export function encodeChunk(raw: Uint8Array, marks: readonly Mark[]): EncodedChunk {
  if (marks.length === 0) return { data: new Uint8Array(0), lastMs: -1 };
  const head = HEAD_BYTES + marks.length * MARK_BYTES;
  if (scratch.length < head + raw.length) scratch = new Uint8Array(head + raw.length);
  const plain = scratch.subarray(0, head + raw.length);
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
  plain.set(raw, head);
  return { data: Bun.zstdCompressSync(plain, { level: ZSTD_LEVEL }), lastMs: marks[marks.length - 1]![0] };
}

/** The marks and raw output of a chunk stored by `encodeChunk` (already decompressed). */
export function decodeChunk(plain: Uint8Array): { raw: Uint8Array; marks: Mark[] } {
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
 */
export class CastLines {
  private readonly decoder = new TextDecoder("utf-8");
  /** The time of the last event line written (−1: none). */
  private lastMs = -1;
  /** The time of the last output bytes, written or not (an unfinished character's). */
  private outMs = -1;

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
      const { raw, marks } = decodeChunk(plain);
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

  /** Event lines as stored before schema v10; later events must not go back before their last. */
  private stored(text: string): string {
    const t = lastEventTime(text);
    if (t !== null) this.lastMs = Math.max(this.lastMs, Math.round(t * 1000));
    return lines(text);
  }

  private events(raw: Uint8Array, marks: readonly Mark[]): string {
    let text = "";
    let at = 0;
    for (const m of marks) {
      if (m.length === 3) {
        text += `[${seconds(m[0])}, "r", "${m[1]}x${m[2]}"]\n`;
        this.lastMs = m[0];
        continue;
      }
      const data = this.decoder.decode(raw.subarray(at, at + m[1]), STREAM);
      at += m[1];
      this.outMs = m[0];
      // A frame that held only the first bytes of a character: it comes out with the next one.
      if (data.length === 0) continue;
      text += `[${seconds(m[0])}, "o", ${JSON.stringify(data)}]\n`;
      this.lastMs = m[0];
    }
    return text;
  }
}

const utf8 = new TextDecoder();
const lines = (text: string) => (text.length === 0 || text.endsWith("\n") ? text : text + "\n");

/** The time (seconds) of the last event line in `text`, or null if it has none. */
export function lastEventTime(text: string): number | null {
  const all = text.trimEnd().split("\n");
  for (let i = all.length - 1; i >= 0; i--) {
    const m = /^\[\s*([0-9.eE+-]+)\s*,/.exec(all[i]!);
    if (m && Number.isFinite(Number(m[1]))) return Number(m[1]);
  }
  return null;
}
