import type { Logger } from "../log.ts";
import type { Store } from "../store/store.ts";

/**
 * Session recordings (S6), the write side. The relay hands every terminal channel's output to
 * a Recorder, which turns it into asciicast v2 event lines (`[t, "o", data]`, `[t, "r",
 * "COLSxROWS"]`) and writes them to `recording_chunks` in the background.
 *
 * The hot path never touches the database: `start`, `output` and `resize` are synchronous and
 * only append to an in-memory buffer per recording, sealed into chunks of `chunkBytes`. Every
 * `flushMs` (and at once during a burst, when `flushAtBytes` of chunks are waiting) one flush
 * writes every new recording row, every pending chunk and every end in ONE transaction. So a crash (kill -9) loses at most the output of the last
 * `flushMs`; whatever was flushed survives.
 *
 * Best effort, by design: recording failure never stalls or breaks a session.
 *   - A failed flush (database down) keeps its chunks and retries them at the next tick, in
 *     order. While flushes fail, no extra flushes are scheduled for full chunks.
 *   - What waits in memory is capped per recording (`maxPendingBytes`, 8 MiB). Beyond it (the
 *     database is down, or slower than the output) the OLDEST pending chunks are dropped (their
 *     sequence numbers leave a gap; the export simply skips it) and a warning is logged once
 *     per recording. `stats().droppedBytes` counts what was lost that way.
 *   - A recording whose session row never appears (`orphanMs` of successful flushes without
 *     it) is given up with a warning; one whose row was deleted while live (retention, a
 *     deleted session) stops being written.
 *   - `output` after `end`, or for an unknown id, is ignored. Nothing here throws into the relay.
 *
 * Backpressure, not loss, when the database is merely slower than the output: `output`
 * answers false once a recording has `highWaterBytes` unwritten (and flushes are succeeding);
 * the relay then stops reading that agent's socket until `onFlushed` listeners hear that the
 * recording is no longer `behind`. So bulk output slows to what the database can take (TCP
 * pushes back to the agent) instead of reaching the cap. A failing database never pushes back.
 *
 * On PostgreSQL servers built with lz4, chunks are TOASTed with lz4 instead of pglz
 * (`set local default_toast_compression`, per flush transaction; no schema change): pglz was
 * about two thirds of the database's cost per recorded MiB (docs/PERFORMANCE.md, relay).
 *
 * Sizes are measured in characters of event text (UTF-16 code units), close to bytes for
 * terminal output; `recordings.bytes` counts the raw terminal output bytes that were stored.
 */
export interface RecorderOptions {
  /** Background flush period; also the most output a crash can lose. */
  flushMs?: number;
  /** A recording's pending text is sealed into a chunk when it reaches this. */
  chunkBytes?: number;
  /**
   * A flush starts at once, without waiting for the tick, when this much has been sealed since
   * the last one (all recordings together). Default: chunkBytes × 16, so a burst is written in
   * batches of chunks (on PGlite every transaction costs the relay's own thread).
   */
  flushAtBytes?: number;
  /** Pending text kept per recording while the database is unreachable; older chunks are dropped beyond it. */
  maxPendingBytes?: number;
  /** Unwritten text of one recording beyond which `output` asks the caller to pause (default: half of maxPendingBytes). */
  highWaterBytes?: number;
  /** How long a recording may wait for its session row before it is given up. */
  orphanMs?: number;
}

export interface RecordingStart {
  tenantId: string;
  sessionId: string;
  machineId: string | null;
  channel: number;
  cols: number;
  rows: number;
  /** When the channel opened, epoch ms; default now. Event times count from it. */
  at?: number;
}

export interface RecorderStats {
  /** Recordings in memory (live, or ended and not yet written). */
  live: number;
  /** Event text waiting to be written, all recordings. */
  pendingBytes: number;
  /** Raw output bytes dropped by the memory cap since start. */
  droppedBytes: number;
  /** Flushes that failed since start. */
  failedFlushes: number;
}

interface Chunk {
  seq: number;
  events: string;
  /** Raw terminal output bytes in it. */
  raw: number;
}

interface Rec {
  readonly id: string;
  readonly tenantId: string;
  readonly sessionId: string;
  readonly machineId: string | null;
  readonly channel: number;
  readonly cols: number;
  readonly rows: number;
  readonly startedAt: number;
  /** performance.now() at startedAt. */
  readonly t0: number;
  readonly decoder: TextDecoder;
  /** The open "o" event: output of one millisecond, merged. openMs < 0: none. */
  openMs: number;
  openText: string;
  /** Closed event lines not yet sealed into a chunk, and the raw bytes they hold. */
  buf: string;
  bufRaw: number;
  /** Sealed chunks waiting to be written, in seq order, and their total text length. */
  sealed: Chunk[];
  queued: number;
  nextSeq: number;
  /** The recordings row exists. */
  inserted: boolean;
  /** First successful flush that did not find the session row. */
  missingSince: number | null;
  endedAt: number | null;
  endWritten: boolean;
  droppedRaw: number;
  warnedDrop: boolean;
}

const STREAM: TextDecodeOptions = { stream: true };
const KiB = 1024;

export class Recorder {
  private readonly recs = new Map<string, Rec>();
  private readonly flushMs: number;
  private readonly chunkChars: number;
  private readonly flushAtChars: number;
  private sealedSinceFlush = 0;
  private readonly capChars: number;
  private readonly highWaterChars: number;
  private readonly orphanMs: number;
  private readonly flushedListeners: Array<() => void> = [];
  /** Whether the store takes `default_toast_compression = lz4`; probed at the first flush. */
  private lz4: Promise<boolean> | null = null;
  private readonly timer: ReturnType<typeof setInterval>;
  private running: Promise<boolean> | null = null;
  private again = false;
  private scheduled = false;
  private failing = false;
  private stopped = false;
  private droppedRaw = 0;
  private failedFlushes = 0;
  private readonly onStop: Array<() => void> = [];

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    opts: RecorderOptions = {},
  ) {
    this.flushMs = opts.flushMs ?? 1000;
    this.chunkChars = opts.chunkBytes ?? 64 * KiB;
    this.flushAtChars = opts.flushAtBytes ?? this.chunkChars * 16;
    this.capChars = Math.max(opts.maxPendingBytes ?? 8 * KiB * KiB, this.chunkChars);
    this.highWaterChars = Math.min(opts.highWaterBytes ?? Math.floor(this.capChars / 2), this.capChars);
    this.orphanMs = opts.orphanMs ?? 60_000;
    this.timer = setInterval(() => void this.flush(), this.flushMs);
    this.timer.unref?.();
  }

  /** A new recording; its row is written by the next flush. Synchronous: never waits for the database. */
  start(r: RecordingStart): string {
    const id = Bun.randomUUIDv7();
    if (this.stopped) return id;
    const now = Date.now();
    const startedAt = r.at ?? now;
    this.recs.set(id, {
      id, tenantId: r.tenantId, sessionId: r.sessionId, machineId: r.machineId, channel: r.channel, cols: r.cols, rows: r.rows,
      startedAt, t0: performance.now() - Math.max(0, now - startedAt),
      decoder: new TextDecoder("utf-8"),
      openMs: -1, openText: "", buf: "", bufRaw: 0, sealed: [], queued: 0, nextSeq: 1,
      inserted: false, missingSince: null, endedAt: null, endWritten: false, droppedRaw: 0, warnedDrop: false,
    });
    return id;
  }

  /**
   * Terminal output (the relay's hot path): decoded as a UTF-8 stream (a character split across
   * frames comes out whole with the later frame) and appended as an "o" event. Output within
   * the same millisecond is merged into one event. Answers false when the caller should stop
   * sending this recording more output until it is no longer `behind` (see onFlushed).
   */
  output(id: string, bytes: Uint8Array): boolean {
    const r = this.recs.get(id);
    if (r === undefined || r.endedAt !== null) return true;
    r.bufRaw += bytes.length;
    const text = r.decoder.decode(bytes, STREAM);
    if (text.length === 0) return true;
    const ms = Math.floor(performance.now() - r.t0);
    if (ms === r.openMs) r.openText += text;
    else {
      if (r.openMs >= 0) this.closeOpen(r);
      r.openMs = ms;
      r.openText = text;
    }
    if (r.buf.length + r.openText.length >= this.chunkChars) {
      this.closeOpen(r);
      this.seal(r);
      if (this.sealedSinceFlush >= this.flushAtChars) this.soon();
      return this.failing || r.queued < this.highWaterChars;
    }
    return true;
  }

  /** Whether a recording has more unwritten output than `highWaterBytes` while the database is taking writes. */
  behind(id: string): boolean {
    const r = this.recs.get(id);
    return r !== undefined && !this.failing && !this.stopped && r.queued + r.buf.length + r.openText.length >= this.highWaterChars;
  }

  /** `f` runs after every flush attempt (written or failed): the time to look at `behind` again. */
  onFlushed(f: () => void): void {
    this.flushedListeners.push(f);
  }

  /** The terminal's new size, as an "r" event. */
  resize(id: string, cols: number, rows: number): void {
    const r = this.recs.get(id);
    if (r === undefined || r.endedAt !== null) return;
    this.closeOpen(r);
    const ms = Math.max(0, Math.floor(performance.now() - r.t0));
    r.buf += `[${(ms / 1000).toFixed(3)}, "r", "${cols | 0}x${rows | 0}"]\n`;
  }

  /**
   * The channel closed: what is pending is written with `ended_at` by a flush started now. The
   * promise settles after that flush attempt (never rejects); if it failed, later ticks retry.
   */
  end(id: string, at = Date.now()): Promise<void> {
    const r = this.recs.get(id);
    if (r === undefined || r.endedAt !== null) return Promise.resolve();
    this.finish(r, at);
    return this.flush().then(() => {});
  }

  /**
   * Writes every new recording row, every pending chunk and every end in one transaction.
   * Resolves true when everything pending at the call was written, false if the database
   * refused (the data is kept for the next tick). Never rejects. A call during a running flush
   * runs one more pass after it, so data appended before the call is included.
   */
  flush(): Promise<boolean> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    const run = (async () => {
      let ok = true;
      try {
        do {
          this.again = false;
          ok = await this.flushOnce();
        } while (this.again && !this.failing);
      } finally {
        this.running = null;
        for (const f of this.flushedListeners) {
          try {
            f();
          } catch (err) {
            this.log.warn({ err: err instanceof Error ? err.message : String(err) }, "recordings: a flush listener failed");
          }
        }
      }
      return ok;
    })();
    this.running = run;
    return run;
  }

  /** Graceful shutdown: every open recording ends now, a final flush, the timer cleared. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    for (const f of this.onStop.splice(0)) f();
    const now = Date.now();
    for (const r of this.recs.values()) if (r.endedAt === null) this.finish(r, now);
    if (this.running) await this.running;
    if (!(await this.flush())) {
      const lost = [...this.recs.values()].reduce((n, r) => n + r.queued, 0);
      this.log.error({ recordings: this.recs.size, pendingBytes: lost }, "recordings: final flush failed; unwritten output is lost");
    }
  }

  /** Runs `f` when the recorder stops (the factory hangs the retention sweeper here). */
  whenStopped(f: () => void): void {
    if (this.stopped) f();
    else this.onStop.push(f);
  }

  stats(): RecorderStats {
    let pending = 0;
    for (const r of this.recs.values()) pending += r.queued + r.buf.length + r.openText.length;
    return { live: this.recs.size, pendingBytes: pending, droppedBytes: this.droppedRaw, failedFlushes: this.failedFlushes };
  }

  // ---- internals ----------------------------------------------------------------------------

  /** The recording's last output (an incomplete character at the very end comes out as U+FFFD), sealed, and its end. */
  private finish(r: Rec, at: number): void {
    const rest = r.decoder.decode();
    if (rest.length > 0) {
      const ms = Math.floor(performance.now() - r.t0);
      if (ms === r.openMs) r.openText += rest;
      else {
        this.closeOpen(r);
        r.openMs = ms;
        r.openText = rest;
      }
    }
    r.endedAt = at;
    this.closeOpen(r);
    this.seal(r);
  }

  private closeOpen(r: Rec): void {
    if (r.openMs < 0) return;
    r.buf += "[" + (r.openMs / 1000).toFixed(3) + ', "o", ' + JSON.stringify(r.openText) + "]\n";
    r.openMs = -1;
    r.openText = "";
  }

  private seal(r: Rec): void {
    if (r.buf.length === 0) return;
    r.sealed.push({ seq: r.nextSeq++, events: r.buf, raw: r.bufRaw });
    r.queued += r.buf.length;
    this.sealedSinceFlush += r.buf.length;
    r.buf = "";
    r.bufRaw = 0;
    if (r.queued > this.capChars) this.dropOldest(r);
  }

  /** The memory cap: drop the oldest pending chunks (never the newest one). */
  private dropOldest(r: Rec): void {
    let dropped = 0;
    while (r.queued > this.capChars && r.sealed.length > 1) {
      const c = r.sealed.shift()!;
      r.queued -= c.events.length;
      dropped += c.raw;
    }
    if (dropped === 0) return;
    r.droppedRaw += dropped;
    this.droppedRaw += dropped;
    if (!r.warnedDrop) {
      r.warnedDrop = true;
      this.log.warn({ recording: r.id, session: r.sessionId, channel: r.channel, droppedBytes: dropped, capBytes: this.capChars }, "recordings: pending output is over its cap (database unreachable or slower than the output); dropping the oldest output of this recording");
    }
  }

  /** A flush as soon as the current I/O is done, unless flushes are failing (the tick retries). */
  private soon(): void {
    if (this.scheduled || this.failing || this.stopped) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.flush();
    });
  }

  private async flushOnce(): Promise<boolean> {
    const rows: object[] = [];
    const chunks: Array<{ recording_id: string; seq: number; events: string }> = [];
    const taken = new Map<Rec, Chunk[]>();
    const ends: Rec[] = [];
    const involved: Rec[] = [];
    this.sealedSinceFlush = 0;
    for (const r of this.recs.values()) {
      if (r.openMs >= 0) this.closeOpen(r);
      if (r.buf.length > 0) this.seal(r);
      if (!r.inserted || r.sealed.length > 0 || (r.endedAt !== null && !r.endWritten)) involved.push(r);
      if (!r.inserted) {
        rows.push({ id: r.id, tenant_id: r.tenantId, session_id: r.sessionId, machine_id: r.machineId, channel: r.channel, cols: r.cols, rows: r.rows, started_at: r.startedAt });
      }
      if (r.sealed.length > 0) {
        taken.set(r, r.sealed);
        for (const c of r.sealed) chunks.push({ recording_id: r.id, seq: c.seq, events: c.events });
        r.sealed = [];
        r.queued = 0;
      }
      if (r.endedAt !== null && !r.endWritten) ends.push(r);
    }
    if (rows.length === 0 && chunks.length === 0 && ends.length === 0) return true;

    let result: { present: Set<string>; written: Set<string> };
    try {
      const lz4 = chunks.length > 0 && (await this.lz4Available());
      result = await this.store.transaction(async (tx) => {
        const present = new Set<string>();
        const written = new Set<string>();
        if (lz4) await tx.query("set local default_toast_compression = 'lz4'");
        if (rows.length > 0) {
          for (const { id } of await tx.query<{ id: string }>(INSERT_RECORDINGS, [JSON.stringify(rows)])) present.add(id);
        }
        if (chunks.length > 0) {
          for (let i = 0; i < chunks.length; i += CHUNKS_PER_STATEMENT) {
            const part = chunks.slice(i, i + CHUNKS_PER_STATEMENT);
            const params: unknown[] = [];
            for (const c of part) params.push(c.recording_id, c.seq, c.events);
            for (const row of await tx.query<{ id: string; seq: number | null }>(insertChunks(part.length), params)) {
              if (row.seq === null) present.add(row.id);
              else written.add(`${row.id}/${row.seq}`);
            }
          }
        }
        // Totals and ends, per recording, from what this transaction actually inserted.
        const updates: object[] = [];
        const touched = new Set<Rec>([...taken.keys(), ...ends]);
        for (const r of touched) {
          let bytes = 0;
          let n = 0;
          for (const c of taken.get(r) ?? []) {
            if (!written.has(`${r.id}/${c.seq}`)) continue;
            bytes += c.raw;
            n++;
          }
          const ending = r.endedAt !== null && (r.inserted || present.has(r.id));
          if (n > 0 || ending) updates.push({ id: r.id, bytes, chunks: n, ended_at: ending ? r.endedAt : null });
        }
        if (updates.length > 0) await tx.query(UPDATE_RECORDINGS, [JSON.stringify(updates)]);
        return { present, written };
      });
    } catch (err) {
      // Nothing of this transaction happened: put the chunks back in front, in order.
      for (const [r, cs] of taken) {
        r.sealed = r.sealed.length > 0 ? cs.concat(r.sealed) : cs;
        r.queued = 0;
        for (const c of r.sealed) r.queued += c.events.length;
        if (r.queued > this.capChars) this.dropOldest(r);
      }
      this.failedFlushes++;
      if (!this.failing) {
        this.failing = true;
        this.log.warn({ err: err instanceof Error ? err.message : String(err), recordings: this.recs.size }, "recordings: flush failed; keeping the output and retrying every tick");
      }
      return false;
    }
    if (this.failing) {
      this.failing = false;
      this.log.info({ failedFlushes: this.failedFlushes }, "recordings: flush succeeded again");
    }

    const now = Date.now();
    let complete = true;
    for (const r of involved) {
      const wasInserted = r.inserted;
      if (!r.inserted && result.present.has(r.id)) r.inserted = true;
      if (!r.inserted) {
        // The session row is not there (yet): keep everything for the next flush, for a while.
        r.missingSince ??= now;
        const cs = taken.get(r);
        if (cs) {
          r.sealed = r.sealed.length > 0 ? cs.concat(r.sealed) : cs;
          for (const c of cs) r.queued += c.events.length;
        }
        if (now - r.missingSince >= this.orphanMs) {
          this.recs.delete(r.id);
          this.log.warn({ recording: r.id, session: r.sessionId, channel: r.channel }, "recordings: the session row never appeared; giving this recording up");
        } else complete = false;
        continue;
      }
      const cs = taken.get(r);
      if (cs && wasInserted && !result.present.has(r.id)) {
        // Written before, gone now: deleted while live (retention, or its session deleted).
        this.recs.delete(r.id);
        this.log.info({ recording: r.id, session: r.sessionId }, "recordings: recording deleted while live; no longer recording it");
        continue;
      }
      if (r.endedAt !== null) r.endWritten = true;
      if (r.endWritten && r.sealed.length === 0 && r.buf.length === 0) this.recs.delete(r.id);
    }
    return complete;
  }

  /** PGlite and PostgreSQL servers built without lz4 only have pglz; a failed probe means no. */
  private lz4Available(): Promise<boolean> {
    this.lz4 ??= this.store.flavor !== "postgres"
      ? Promise.resolve(false)
      : this.store.query<{ ok: boolean }>("select 'lz4' = any(enumvals) as ok from pg_settings where name = 'default_toast_compression'")
        .then((rows) => rows[0]?.ok === true, () => {
          this.lz4 = null; // the database is down: ask again at the next flush
          return false;
        });
    return this.lz4;
  }
}

// New recording rows (only for sessions that exist: one missing session must not fail the
// whole flush), answering with every id of the batch that is in the table now.
const INSERT_RECORDINGS = `
  with x as (
    select * from jsonb_to_recordset($1::text::jsonb)
      as x(id uuid, tenant_id uuid, session_id uuid, machine_id uuid, channel bigint, cols int, rows int, started_at bigint)
  ), ins as (
    insert into recordings (id, tenant_id, session_id, machine_id, channel, cols, rows, started_at)
    select x.id, x.tenant_id, x.session_id, x.machine_id, x.channel, x.cols, x.rows, timestamptz 'epoch' + x.started_at * interval '1 millisecond'
      from x where exists (select 1 from sessions s where s.id = x.session_id)
    on conflict (id) do nothing
    returning id
  )
  select id::text as id from ins
  union
  select x.id::text from x join recordings r on r.id = x.id`;

// Chunks of recordings that exist. Answers (id, seq) for each chunk inserted and (id, null)
// for each recording found; a chunk already there (a retried commit) is left as it is. The
// event text travels as plain text parameters, not inside a JSON document: no second round of
// escaping on the way out, no JSON parsing on the way in. One statement text per row count.
const CHUNKS_PER_STATEMENT = 50;
const chunkStatements = new Map<number, string>();
function insertChunks(n: number): string {
  let sql = chunkStatements.get(n);
  if (sql) return sql;
  const rows = Array.from({ length: n }, (_, i) => `($${3 * i + 1}::uuid, $${3 * i + 2}::int, $${3 * i + 3}::text)`).join(", ");
  sql = `
  with x (recording_id, seq, events) as (
    values ${rows}
  ), k as (
    select x.* from x join recordings r on r.id = x.recording_id
  ), ins as (
    insert into recording_chunks (recording_id, seq, events)
    select recording_id, seq, events from k
    on conflict (recording_id, seq) do nothing
    returning recording_id, seq
  )
  select recording_id::text as id, seq from ins
  union all
  select distinct recording_id::text, null::int from k`;
  chunkStatements.set(n, sql);
  return sql;
}

const UPDATE_RECORDINGS = `
  update recordings r
     set bytes = r.bytes + x.bytes,
         chunks = r.chunks + x.chunks,
         ended_at = coalesce(timestamptz 'epoch' + x.ended_at * interval '1 millisecond', r.ended_at)
    from jsonb_to_recordset($1::text::jsonb) as x(id uuid, bytes bigint, chunks int, ended_at bigint)
   where r.id = x.id`;
