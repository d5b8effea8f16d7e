import type { Queryable } from "../store/store.ts";
import { CastLines, ChunkFormatError } from "./chunk-codec.ts";
import { getRecording, type RecordingRow } from "./recordings.ts";

/**
 * Recordings as asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/), the format
 * asciinema and its player read: newline-delimited JSON, a header object on the first line,
 * then one `[time, code, data]` event per line (time in seconds from the start, a float).
 * An export is the header followed by the event lines of the chunks in sequence order
 * (chunk-codec.ts builds them from the stored output), streamed a chunk at a time.
 */

export const CAST_CONTENT_TYPE = "application/x-asciicast";

export interface CastHeader {
  version: 2;
  width: number;
  height: number;
  timestamp?: number;
  duration?: number;
  title?: string;
  env?: Record<string, string>;
  [k: string]: unknown;
}

export type CastEventCode = "o" | "i" | "m" | "r";
export type CastEvent = [time: number, code: CastEventCode, data: string];

export interface Cast {
  header: CastHeader;
  events: CastEvent[];
}

/** The header line (with its newline) of a recording. */
export function castHeader(r: Pick<RecordingRow, "cols" | "rows" | "started_at" | "ended_at">, title?: string): string {
  const started = new Date(r.started_at).getTime();
  const header: CastHeader = { version: 2, width: r.cols, height: r.rows, timestamp: Math.floor(started / 1000) };
  if (r.ended_at !== null) header.duration = Math.max(0, new Date(r.ended_at).getTime() - started) / 1000;
  if (title) header.title = title;
  return JSON.stringify(header) + "\n";
}

export interface CastOptions {
  title?: string;
  /** Chunk rows fetched per query (default 16: at most a few MiB of compressed rows held). */
  pageSize?: number;
  /** Cast text the stream reads ahead of its reader (default 1 MiB): what one pull writes, plus at most one chunk's lines. */
  readAheadBytes?: number;
  /** A stored chunk that cannot be read: it is skipped, with a marker event in its place, and reported here. */
  onCorrupt?: (seq: number, err: ChunkFormatError) => void;
}

const KiB = 1024;
const PAGE_ROWS = 16;
const READ_AHEAD_BYTES = 1024 * KiB;
/** Cast text built between two turns of the event loop at most, before the next chunk is read. */
const YIELD_BYTES = 64 * KiB;
/**
 * How far past the recording's span (start to end, or to now while open) an event time may be
 * before its chunk counts as damaged. Event times come from the monotonic clock, the span from
 * the wall clock: this covers the wall clock being set back during a recording by up to a day.
 */
const SPAN_SLACK_MS = 86_400_000;

type ChunkRow = { seq: number; events: string | null; data: Uint8Array | null };

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * The whole cast as a stream: the header, then the chunks' event lines (a huge recording is
 * never in memory at once). Reads from `db` as the consumer pulls. The status and headers are
 * out before the chunks are read, so a corrupt chunk cannot fail the response: the rest of the
 * recording still plays, and the marker says where something is missing.
 */
export function castStream(db: Queryable, r: RecordingRow, opts: CastOptions = {}): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>(castSource(db, r, opts), new ByteLengthQueuingStrategy({ highWaterMark: opts.readAheadBytes ?? READ_AHEAD_BYTES }));
}

/**
 * castStream's source. A pull writes one chunk's lines at a time while the stream wants more
 * (`desiredSize`, in bytes), so it ends about `readAheadBytes` later; it lets the event loop
 * turn every YIELD_BYTES of text (a chunk is at most ~1.5 MiB of text, a few ms of work).
 * Rows come `pageSize` per query and each is let go once written. A whole page decoded in one
 * go held up to 25 MiB of output as text (six times that as control characters escape to
 * `\u001b`) and kept the event loop for half a second.
 */
export function castSource(db: Queryable, r: RecordingRow, opts: CastOptions = {}): UnderlyingDefaultSource<Uint8Array> & { pull(c: ReadableStreamDefaultController<Uint8Array>): Promise<void> } {
  const pageSize = opts.pageSize ?? PAGE_ROWS;
  const encoder = new TextEncoder();
  const started = new Date(r.started_at).getTime();
  const span = Math.max(0, (r.ended_at !== null ? new Date(r.ended_at).getTime() : Date.now()) - started);
  const lines = new CastLines({ maxMs: span + SPAN_SLACK_MS });
  let page: Array<ChunkRow | null> = [];
  let next = 0;
  let after: number | null = null;
  let more = true;
  let sinceTurn = 0;
  return {
    async pull(controller) {
      const out = (text: string) => {
        if (text.length === 0) return;
        const bytes = encoder.encode(text);
        sinceTurn += bytes.length;
        controller.enqueue(bytes);
      };
      if (after === null) {
        after = 0;
        out(castHeader(r, opts.title));
      }
      for (;;) {
        if (sinceTurn >= YIELD_BYTES) {
          await turn();
          sinceTurn = 0;
        }
        // Checked after every wait too: a reader that went away (cancelled) leaves it at 0.
        if (!((controller.desiredSize ?? 0) > 0)) return;
        if (next === page.length) {
          if (!more) {
            // An unfinished character at the end of a recording still open may be completed by the next chunk.
            if (r.ended_at !== null) out(lines.end());
            controller.close();
            return;
          }
          page = await db.query<ChunkRow>("select seq, events, data from recording_chunks where recording_id = $1 and seq > $2 order by seq limit $3", [r.id, after, pageSize]);
          next = 0;
          more = page.length === pageSize;
          continue;
        }
        const c = page[next]!;
        page[next++] = null;
        // A gap (chunks dropped under memory pressure): a character cut there is not joined to what follows.
        if (c.seq !== after + 1) out(lines.end());
        try {
          out(lines.chunk(c));
        } catch (err) {
          if (!(err instanceof ChunkFormatError)) throw err;
          opts.onCorrupt?.(c.seq, err);
          out(lines.end() + lines.marker(`Tether: part ${c.seq} of this recording is damaged and was skipped`));
        }
        after = c.seq;
      }
    },
  };
}

/** A recording of the tenant, ready to stream as a .cast file; null if there is no such recording. */
export async function openCast(db: Queryable, tenantId: string, id: string, opts: Omit<CastOptions, "title"> = {}): Promise<{ recording: RecordingRow; filename: string; stream: ReadableStream<Uint8Array> } | null> {
  const recording = await getRecording(db, tenantId, id);
  if (!recording) return null;
  const [machine] = recording.machine_id
    ? await db.query<{ hostname: string }>("select hostname from machines where id = $1 and tenant_id = $2", [recording.machine_id, tenantId])
    : [];
  const title = `${machine ? machine.hostname : `session ${recording.session_id}`}: terminal ${recording.channel}`;
  return {
    recording,
    filename: `${recording.session_id}-${recording.channel}.cast`,
    stream: castStream(db, recording, { ...opts, title }),
  };
}

/** The whole cast as text (tests, small recordings). */
export async function exportCast(db: Queryable, tenantId: string, id: string, opts: Omit<CastOptions, "title"> = {}): Promise<string | null> {
  const cast = await openCast(db, tenantId, id, opts);
  return cast ? new Response(cast.stream).text() : null;
}

export class CastFormatError extends Error {}

const CODES = new Set(["o", "i", "m", "r"]);
const isInt = (v: unknown, min: number) => typeof v === "number" && Number.isInteger(v) && v >= min;

/**
 * Parses and checks an asciicast v2 file against the spec: the header's required and typed
 * optional attributes, every event a [time ≥ 0, known code, string] array, times never going
 * back, resize data `COLSxROWS`. Throws CastFormatError naming the line.
 */
export function parseCast(text: string): Cast {
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  if (lines.length === 0) throw new CastFormatError("line 1: no header");
  let header: CastHeader;
  try {
    header = JSON.parse(lines[0]!);
  } catch {
    throw new CastFormatError("line 1: the header is not JSON");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) throw new CastFormatError("line 1: the header is not an object");
  if (header.version !== 2) throw new CastFormatError("line 1: version must be 2");
  if (!isInt(header.width, 1) || !isInt(header.height, 1)) throw new CastFormatError("line 1: width and height must be positive integers");
  if (header.timestamp !== undefined && !isInt(header.timestamp, 0)) throw new CastFormatError("line 1: timestamp must be an integer (Unix seconds)");
  if (header.duration !== undefined && (typeof header.duration !== "number" || header.duration < 0)) throw new CastFormatError("line 1: duration must be a number");
  if (header.title !== undefined && typeof header.title !== "string") throw new CastFormatError("line 1: title must be a string");
  if (header.env !== undefined && (typeof header.env !== "object" || header.env === null || Object.values(header.env).some((v) => typeof v !== "string"))) {
    throw new CastFormatError("line 1: env must map strings to strings");
  }
  const events: CastEvent[] = [];
  let last = 0;
  for (let i = 1; i < lines.length; i++) {
    const where = `line ${i + 1}`;
    let e: unknown;
    try {
      e = JSON.parse(lines[i]!);
    } catch {
      throw new CastFormatError(`${where}: not JSON`);
    }
    if (!Array.isArray(e) || e.length !== 3) throw new CastFormatError(`${where}: an event is a 3-element array`);
    const [t, code, data] = e as [unknown, unknown, unknown];
    if (typeof t !== "number" || !Number.isFinite(t) || t < 0) throw new CastFormatError(`${where}: time must be a non-negative number`);
    if (t < last) throw new CastFormatError(`${where}: time goes back (${t} after ${last})`);
    if (typeof code !== "string" || !CODES.has(code)) throw new CastFormatError(`${where}: unknown event code ${JSON.stringify(code)}`);
    if (typeof data !== "string") throw new CastFormatError(`${where}: data must be a string`);
    if (code === "r" && !/^\d+x\d+$/.test(data)) throw new CastFormatError(`${where}: resize data must be COLSxROWS`);
    last = t;
    events.push([t, code as CastEventCode, data]);
  }
  return { header, events };
}

/** What a player prints: every output event's data, in order. */
export function replayOutput(cast: Cast): string {
  let out = "";
  for (const [, code, data] of cast.events) if (code === "o") out += data;
  return out;
}
