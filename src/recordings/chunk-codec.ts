/**
 * How a recording chunk is stored (schema v8): the chunk's asciicast v2 event lines, zstd
 * compressed. The relay's hot path only copies raw terminal bytes and notes their timing
 * (`Mark`s); turning them into event lines (UTF-8 decoding, JSON escaping) and compressing them
 * is this module's work, done off the relay's thread (compressor-worker.ts), at read time
 * undone by `chunkText`.
 *
 * Pure functions, no I/O: the worker and the in-thread fallback share them, and tests call them.
 */

/**
 * What happened in a chunk, in order: `[ms, len]` is `len` raw output bytes (the next ones of
 * the chunk) at `ms` after the recording started; `[ms, cols, rows]` is a resize.
 */
export type Mark = [ms: number, len: number] | [ms: number, cols: number, rows: number];

/** The compression level: zstd's fastest (≈ 1.6 ms/MiB, 7× on terminal output here). */
const ZSTD_LEVEL = 1;
const STREAM: TextDecodeOptions = { stream: true };

const seconds = (ms: number) => (ms / 1000).toFixed(3);

export interface ChunkEvents {
  /** Newline-terminated asciicast event lines. */
  text: string;
  /** The time of the last event, ms from the start (−1: no event). */
  lastMs: number;
}

/**
 * Event lines of one chunk. `decoder` carries a UTF-8 character split across chunks over to the
 * next one (one decoder per recording, chunks in order); with `final`, what is left of an
 * incomplete character comes out as U+FFFD in the last event.
 */
export function chunkEvents(decoder: TextDecoder, raw: Uint8Array, marks: readonly Mark[], final: boolean): ChunkEvents {
  let text = "";
  let lastMs = -1;
  /** The time of the last output bytes, shown or not (an unfinished character's). */
  let outMs = -1;
  let at = 0;
  for (const m of marks) {
    if (m.length === 3) {
      text += `[${seconds(m[0])}, "r", "${m[1] | 0}x${m[2] | 0}"]\n`;
      lastMs = m[0];
      continue;
    }
    const data = decoder.decode(raw.subarray(at, at + m[1]), STREAM);
    at += m[1];
    outMs = m[0];
    // A frame that held only the first bytes of a character: it comes out with the next one.
    if (data.length === 0) continue;
    text += `[${seconds(m[0])}, "o", ${JSON.stringify(data)}]\n`;
    lastMs = m[0];
  }
  if (final) {
    const rest = decoder.decode();
    if (rest.length > 0) {
      const ms = Math.max(lastMs, outMs, 0);
      text += `[${seconds(ms)}, "o", ${JSON.stringify(rest)}]\n`;
      lastMs = ms;
    }
  }
  return { text, lastMs };
}

export interface EncodedChunk {
  /** zstd-compressed event lines; empty when the chunk has no events. */
  data: Uint8Array;
  lastMs: number;
  /** The raw buffer, handed back for reuse (allocating one per chunk costs more than the relay's copy). */
  raw?: ArrayBuffer;
}

/** A chunk as it is stored. */
export function encodeChunk(decoder: TextDecoder, raw: Uint8Array, marks: readonly Mark[], final: boolean): EncodedChunk {
  const { text, lastMs } = chunkEvents(decoder, raw, marks, final);
  if (text.length === 0) return { data: new Uint8Array(0), lastMs };
  return { data: Bun.zstdCompressSync(text, { level: ZSTD_LEVEL }), lastMs };
}

/**
 * Encodes the chunks of many recordings, each in order, keeping one UTF-8 decoder per
 * recording so that a character split across chunks comes out whole.
 */
export class ChunkEncoder {
  private readonly decoders = new Map<string, TextDecoder>();

  encode(rec: string, raw: Uint8Array, marks: readonly Mark[], final: boolean): EncodedChunk {
    let decoder = this.decoders.get(rec);
    if (!decoder) this.decoders.set(rec, (decoder = new TextDecoder("utf-8")));
    if (final) this.decoders.delete(rec);
    return encodeChunk(decoder, raw, marks, final);
  }
}

const utf8 = new TextDecoder();

/** The event lines of a stored chunk: `data` (v8) or, for chunks written before v8, `events`. */
export function chunkText(c: { data?: Uint8Array | null; events?: string | null }): string {
  if (c.data && c.data.length > 0) return utf8.decode(Bun.zstdDecompressSync(c.data));
  return c.events ?? "";
}
