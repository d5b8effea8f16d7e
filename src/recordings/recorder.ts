import type { Logger } from "../log.ts";
import type { Store } from "../store/store.ts";
import type { Mark } from "./chunk-codec.ts";
import { type ChunkCompressor, WorkerCompressor } from "./compressor.ts";

/**
 * Session recordings (S6), the write side. The relay hands every terminal channel's output to
 * a Recorder, which stores it in `recording_chunks` as it came, with its timing and the terminal's
 * resizes, zstd-compressed (chunk-codec.ts); the export turns that into asciicast v2.
 *
 * The hot path does as little as it can: `start`, `output` and `resize` are synchronous and
 * note the output's time (output within one millisecond shares one mark). Output the caller
 * gives up (the relay's frames, once delivered) is kept as it is, from BY_REFERENCE bytes on;
 * smaller output is copied into a small buffer. A full chunk (`chunkBytes`), and every
 * `flushMs` whatever is buffered, is sealed and handed to the compressor (compressor.ts: a worker thread at the
 * lowest CPU priority). Compressed chunks are written by a flush: every `flushMs`, and at once
 * when `flushAtBytes` of output is ready; one flush writes every new recording row, every ready
 * chunk and every end in ONE transaction.
 *
 * Bursts are compressed after they end. Recording costs a few ms of CPU per MiB (compressing,
 * writing), and while the relay streams bulk output that CPU is not free: measured here, even
 * a nice-19 thread on the other core slows the relay's thread by a fifth. So while a
 * recording's output runs above `burstBytesPerSecond` (8 MiB/s: far above anyone typing, far
 * below `cat` of a big file), its sealed chunks wait, up to `holdBytes` (64 MiB in all, over
 * every bursting recording), and go to the compressor once its output has been quiet for
 * 50 ms; beyond `holdBytes` the oldest go at once. The rate is measured per recording and only
 * the bursting ones are held: the other recordings' chunks (small, cheap to compress) go to
 * the compressor as always, so one terminal's burst never delays another's output by more
 * than `flushMs`. A crash (kill -9) therefore loses what was not yet flushed: the last
 * `flushMs`, or the part of a burst still held or compressing.
 *
 * Times: event times and a recording's end count on the monotonic clock (performance.now())
 * from its start, so a wall clock stepped meanwhile moves neither; only `started_at` (and an
 * explicit `at` given to `end`) is wall-clock time.
 *
 * Best effort, by design: recording failure never stalls or breaks a session.
 *   - A failed flush (database down) keeps its chunks and retries them at the next tick, in
 *     order. While flushes fail, no extra flushes are scheduled.
 *   - What waits in memory is capped per recording (`maxPendingBytes`, 128 MiB) and in all
 *     (`maxTotalPendingBytes`, 512 MiB). Beyond a cap the OLDEST pending chunks of the recording
 *     that went over are dropped (their sequence numbers leave a gap; the export skips it) and
 *     a warning is logged once per recording. `stats().droppedBytes` counts what was lost.
 *   - A recording whose session row never appears (`orphanMs` of successful flushes without
 *     it) is given up with a warning; one whose row was deleted while live (its session
 *     deleted) stops being written. Retention never deletes an open recording (retention.ts).
 *   - If the compressor thread fails, the chunks it held are lost (counted as dropped) and
 *     later chunks are compressed on the relay's thread.
 *   - `output` after `end`, or for an unknown id, is ignored. Nothing here throws into the relay.
 *
 * Backpressure, not loss, when the database or the compressor is merely slower than the
 * output: `output` answers false once a recording has `highWaterBytes` (96 MiB) unwritten, or
 * all recordings together `totalHighWaterBytes` (256 MiB), while flushes are succeeding; the
 * relay then stops reading that agent's socket until `onFlushed` listeners hear that the
 * recording is no longer `behind`. So a burst up to the budget is relayed at full speed and a
 * longer one slows to what recording can take. A failing database never pushes back.
 *
 * Sizes count raw terminal output bytes; `recordings.bytes` is the raw output stored.
 */
export interface RecorderOptions {
  /** Background flush period; also the most output a crash can lose when nothing is behind. */
  flushMs?: number;
  /** A recording's buffered output is sealed into a chunk when it reaches this. */
  chunkBytes?: number;
  /** A flush starts at once, without waiting for the tick, when this much output is compressed and waiting. */
  flushAtBytes?: number;
  /** Unwritten output kept per recording; older chunks are dropped beyond it. */
  maxPendingBytes?: number;
  /** Unwritten output kept in all; beyond it the recording that adds drops its oldest chunks. */
  maxTotalPendingBytes?: number;
  /** Unwritten output of one recording beyond which `output` asks the caller to pause. */
  highWaterBytes?: number;
  /** Unwritten output of all recordings beyond which `output` asks the caller to pause. */
  totalHighWaterBytes?: number;
  /** How long a recording may wait for its session row before it is given up. */
  orphanMs?: number;
  /** Output above this rate is a burst: its chunks are compressed after it (see `holdBytes`). */
  burstBytesPerSecond?: number;
  /** Output of a burst held back from the compressor at most (all recordings); beyond it the oldest is compressed at once. */
  holdBytes?: number;
  /** Where chunks are compressed (default: a low-priority worker thread). */
  compressor?: ChunkCompressor;
  /**
   * How long `stop()` waits for its final flush (a database or compressor that hangs); after it
   * logs an error with what is lost and returns, so shutdown goes on.
   */
  stopTimeoutMs?: number;
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
  /** Raw output waiting to be written (buffered, compressing or compressed), all recordings. */
  pendingBytes: number;
  /** Raw output bytes dropped by the memory caps (or lost with a failed compressor) since start. */
  droppedBytes: number;
  /** Flushes that failed since start. */
  failedFlushes: number;
}

interface Chunk {
  seq: number;
  /** Raw terminal output bytes in it. */
  raw: number;
  /** The stored form, once the compressor is done with it. */
  data: Uint8Array | null;
  lastMs: number;
  /** Dropped by a cap, or lost with the compressor, before it was written. */
  gone: boolean;
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
  /**
   * Output not yet sealed, `bufLen` bytes in all, and their marks: `parts` in order, then the
   * first `tailLen` bytes of `buf` (output copied, allocated on demand).
   */
  parts: Uint8Array[];
  buf: Uint8Array | null;
  tailLen: number;
  bufLen: number;
  marks: Mark[];
  /** The last mark if it is output (the next output of the same millisecond joins it). */
  openMark: [number, number] | null;
  /** Sealed chunks not yet written, in seq order, and their raw bytes. */
  sealed: Chunk[];
  queued: number;
  nextSeq: number;
  /** The recordings row exists. */
  inserted: boolean;
  /** First successful flush that did not find the session row. */
  missingSince: number | null;
  endedAt: number | null;
  endWritten: boolean;
  warnedDrop: boolean;
  /** This recording's output rate (see RATE_WINDOW_MS): its current window's start and bytes. */
  windowStart: number;
  windowBytes: number;
  /** performance.now() until which this recording is bursting: its sealed chunks are held. */
  busyUntil: number;
}

const KiB = 1024;
const MiB = KiB * KiB;
/**
 * Output the caller gives up (`owned`) from this size on is kept as it is, not copied: at bulk
 * rates the copy into chunk buffers (cold memory, 64 MiB of them in a burst) cost the relay's
 * thread about 0.17 ms per MiB, a sixth of its own work (docs/PERFORMANCE.md, Relay). Smaller
 * output is copied, so typing does not make a part (and a buffer to transfer) per keystroke.
 */
const BY_REFERENCE = 4 * KiB;
/** Copied output goes into a buffer that starts at FIRST_BUFFER and doubles up to COPY_BUFFER; a new one starts then. */
const FIRST_BUFFER = 4 * KiB;
const COPY_BUFFER = 64 * KiB;
/** Output is a burst while it runs above `burstBytesPerSecond` over windows of this… */
const RATE_WINDOW_MS = 100;
/** …and has been, until it has been below for this long. */
const QUIET_MS = 50;

interface Held {
  r: Rec;
  chunk: Chunk;
  raw: Uint8Array[];
  marks: Mark[];
}

export class Recorder {
  private readonly recs = new Map<string, Rec>();
  private readonly flushMs: number;
  private readonly chunkBytes: number;
  private readonly flushAtBytes: number;
  private readonly cap: number;
  private readonly totalCap: number;
  private readonly highWater: number;
  private readonly totalHighWater: number;
  private readonly orphanMs: number;
  private readonly compressor: ChunkCompressor;
  private readonly flushedListeners: Array<() => void> = [];
  /** Compressions not yet answered: a full flush waits for them. */
  private readonly compressing = new Set<Promise<unknown>>();
  /** Sealed chunks not yet given to the compressor, oldest first (see pump and the class comment). */
  private readonly held: Held[] = [];
  private heldBytes = 0;
  private readonly holdBytes: number;
  private readonly burstBytesPerWindow: number;
  private readonly stopTimeoutMs: number;
  /** Raw bytes of the chunks a flush has taken and not yet written (lost if the process goes now). */
  private flushingBytes = 0;
  private quietTimer: ReturnType<typeof setTimeout> | null = null;
  private readyBytes = 0;
  /** Raw bytes of every sealed, unwritten chunk of every recording. */
  private queuedTotal = 0;
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
    this.chunkBytes = opts.chunkBytes ?? 256 * KiB;
    this.flushAtBytes = opts.flushAtBytes ?? this.chunkBytes * 4;
    this.cap = Math.max(opts.maxPendingBytes ?? 128 * MiB, this.chunkBytes);
    this.totalCap = Math.max(opts.maxTotalPendingBytes ?? 512 * MiB, this.cap);
    this.highWater = Math.min(opts.highWaterBytes ?? Math.floor((this.cap * 3) / 4), this.cap);
    this.totalHighWater = Math.min(opts.totalHighWaterBytes ?? Math.floor(this.totalCap / 2), this.totalCap);
    this.orphanMs = opts.orphanMs ?? 60_000;
    this.holdBytes = opts.holdBytes ?? 64 * MiB;
    this.burstBytesPerWindow = ((opts.burstBytesPerSecond ?? 8 * MiB) * RATE_WINDOW_MS) / 1000;
    this.compressor = opts.compressor ?? new WorkerCompressor(log);
    this.stopTimeoutMs = opts.stopTimeoutMs ?? 5000;
    this.timer = setInterval(() => this.tick(), this.flushMs);
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
      parts: [], buf: null, tailLen: 0, bufLen: 0, marks: [], openMark: null, sealed: [], queued: 0, nextSeq: 1,
      inserted: false, missingSince: null, endedAt: null, endWritten: false, warnedDrop: false,
      windowStart: 0, windowBytes: 0, busyUntil: 0,
    });
    return id;
  }

  /**
   * Terminal output (the relay's hot path). `owned`: the caller gives up `bytes` and its whole
   * ArrayBuffer, which is kept without a copy and later transferred to the compressor thread
   * (detached here); otherwise the bytes are copied. Answers false when the caller should stop
   * sending this recording more output until it is no longer `behind` (see onFlushed).
   */
  output(id: string, bytes: Uint8Array, owned = false): boolean {
    const r = this.recs.get(id);
    if (r === undefined || r.endedAt !== null || bytes.length === 0) return true;
    if (r.bufLen > 0 && r.bufLen + bytes.length > this.chunkBytes) this.seal(r, false);
    if (owned && bytes.length >= BY_REFERENCE) this.keep(r, bytes);
    else this.append(r, bytes);
    const now = performance.now();
    if (now - r.windowStart >= RATE_WINDOW_MS) {
      r.windowStart = now;
      r.windowBytes = 0;
    }
    r.windowBytes += bytes.length;
    if (r.windowBytes >= this.burstBytesPerWindow) r.busyUntil = now + QUIET_MS;
    const ms = Math.floor(now - r.t0);
    if (r.openMark !== null && r.openMark[0] === ms) r.openMark[1] += bytes.length;
    else r.marks.push((r.openMark = [ms, bytes.length]));
    if (r.bufLen >= this.chunkBytes) this.seal(r, false);
    return !this.over(r);
  }

  /** Whether a recording (or all of them) has more unwritten output than the high water while the database is taking writes. */
  behind(id: string): boolean {
    const r = this.recs.get(id);
    return r !== undefined && !this.stopped && this.over(r);
  }

  /** `f` runs after every flush attempt (written or failed): the time to look at `behind` again. */
  onFlushed(f: () => void): void {
    this.flushedListeners.push(f);
  }

  /** The terminal's new size, as an "r" event. */
  resize(id: string, cols: number, rows: number): void {
    const r = this.recs.get(id);
    if (r === undefined || r.endedAt !== null) return;
    r.marks.push([Math.max(0, Math.floor(performance.now() - r.t0)), cols | 0, rows | 0]);
    r.openMark = null;
  }

  /**
   * The channel closed: what is pending is written with `ended_at` by a flush started now. The
   * promise settles after that flush attempt (never rejects); if it failed, later ticks retry.
   * `at` (epoch ms) defaults to now on the recording's own clock (see endTime).
   */
  end(id: string, at?: number): Promise<void> {
    const r = this.recs.get(id);
    if (r === undefined || r.endedAt !== null) return Promise.resolve();
    r.endedAt = this.endTime(r, at);
    this.seal(r, true);
    return this.flush().then(() => {});
  }

  /**
   * Writes everything output so far: waits for the compressor to finish what it holds, then
   * writes every new recording row, every pending chunk and every end in one transaction.
   * Resolves true when everything pending at the call was written, false if the database
   * refused (the data is kept for the next tick). Never rejects.
   */
  async flush(): Promise<boolean> {
    for (const r of this.recs.values()) this.seal(r, false);
    this.pump(true);
    if (this.compressing.size > 0) await Promise.allSettled([...this.compressing]);
    return this.flushNow();
  }

  /**
   * Graceful shutdown: every open recording ends now, a final flush, the timer cleared. Returns
   * after `stopTimeoutMs` at most: a database or compressor that hangs does not hold up the
   * rest of the shutdown (what was not written is lost, and logged as an error).
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timer);
    if (this.quietTimer) clearTimeout(this.quietTimer);
    this.quietTimer = null;
    for (const f of this.onStop.splice(0)) f();
    for (const r of this.recs.values()) {
      if (r.endedAt !== null) continue;
      r.endedAt = this.endTime(r);
      this.seal(r, true);
    }
    const final = (async () => {
      if (this.running) await this.running;
      return this.flush();
    })();
    let deadline: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      final,
      new Promise<"timeout">((resolve) => (deadline = setTimeout(() => resolve("timeout"), this.stopTimeoutMs))),
    ]);
    clearTimeout(deadline);
    const lost = { recordings: this.recs.size, pendingBytes: this.queuedTotal + this.flushingBytes };
    if (outcome === "timeout") {
      this.log.error({ ...lost, timeoutMs: this.stopTimeoutMs }, "recordings: final flush did not finish in time (database or compressor hanging); going on with the shutdown, unwritten output is lost");
    } else if (!outcome) {
      this.log.error(lost, "recordings: final flush failed; unwritten output is lost");
    }
    this.compressor.close();
  }

  /** Runs `f` when the recorder stops (the factory hangs the retention sweeper here). */
  whenStopped(f: () => void): void {
    if (this.stopped) f();
    else this.onStop.push(f);
  }

  stats(): RecorderStats {
    let buffered = 0;
    for (const r of this.recs.values()) buffered += r.bufLen;
    return { live: this.recs.size, pendingBytes: this.queuedTotal + buffered, droppedBytes: this.droppedRaw, failedFlushes: this.failedFlushes };
  }

  // ---- internals ----------------------------------------------------------------------------

  /**
   * When a recording ends: `at` if given (never before the start, should the wall clock have
   * been set back meanwhile: retention relies on it, retention.ts), else its start plus the time
   * elapsed on the monotonic clock its events are timed by, so the header's duration and the
   * last event agree whatever the wall clock did.
   */
  private endTime(r: Rec, at?: number): number {
    if (at !== undefined) return Math.max(at, r.startedAt);
    return r.startedAt + Math.max(0, Math.floor(performance.now() - r.t0));
  }

  private over(r: Rec): boolean {
    if (this.failing) return false;
    return r.queued + r.bufLen >= this.highWater || this.queuedTotal >= this.totalHighWater;
  }

  /** Output the caller gave up: kept as it is, no copy (its buffer goes to the compressor). */
  private keep(r: Rec, bytes: Uint8Array): void {
    this.closeTail(r);
    r.parts.push(bytes);
    r.bufLen += bytes.length;
  }

  /** What was copied so far becomes a part; later copies start a new buffer. */
  private closeTail(r: Rec): void {
    if (r.buf !== null && r.tailLen > 0) r.parts.push(r.buf.subarray(0, r.tailLen));
    if (r.tailLen > 0) r.buf = null;
    r.tailLen = 0;
  }

  /** Output copied into the recording's copy buffer (see COPY_BUFFER). */
  private append(r: Rec, bytes: Uint8Array): void {
    if (r.buf !== null && r.tailLen + bytes.length > r.buf.length && r.buf.length >= COPY_BUFFER) this.closeTail(r);
    const need = r.tailLen + bytes.length;
    if (r.buf === null || need > r.buf.length) {
      let size = Math.max(r.buf?.length ?? FIRST_BUFFER, FIRST_BUFFER);
      while (size < need) size *= 2;
      const grown = new Uint8Array(Math.max(need, Math.min(size, COPY_BUFFER, this.chunkBytes)));
      if (r.buf !== null) grown.set(r.buf.subarray(0, r.tailLen));
      r.buf = grown;
    }
    r.buf.set(bytes, r.tailLen);
    r.tailLen = need;
    r.bufLen += bytes.length;
  }

  /**
   * What is buffered becomes a chunk, handed to the compressor. `final`: the recording's last
   * one, never held back.
   */
  private seal(r: Rec, final: boolean): void {
    if (r.bufLen === 0 && r.marks.length === 0) return;
    this.closeTail(r);
    const raw = r.parts;
    r.parts = [];
    const chunk: Chunk = { seq: r.nextSeq++, raw: r.bufLen, data: null, lastMs: -1, gone: false };
    const marks = r.marks;
    r.buf = null;
    r.bufLen = 0;
    r.marks = [];
    r.openMark = null;
    r.sealed.push(chunk);
    r.queued += chunk.raw;
    this.queuedTotal += chunk.raw;
    this.held.push({ r, chunk, raw, marks });
    this.heldBytes += chunk.raw;
    if (r.queued > this.cap || this.queuedTotal > this.totalCap) this.dropOldest(r);
    this.pump(final);
  }

  /**
   * Hands sealed chunks to the compressor, oldest first (so each recording's stay in order).
   * The chunks of a recording in a burst of output (more than `burstBytesPerSecond` of it) are
   * held back, up to `holdBytes` over all recordings, and compressed once its output has been
   * quiet for QUIET_MS: compressing beside the relay slows it even on another core (on this
   * kind of machine the cores share more than their caches), while a burst is over soon. Other
   * recordings' chunks go at once. `all`: no holding back (a flush was asked for, or a
   * recording ended).
   */
  private pump(all = false): void {
    // Over the budget (or nothing to hold back): the oldest go, whichever recording's they are.
    while (this.held.length > 0 && (all || this.heldBytes > this.holdBytes)) this.release(this.held.shift()!);
    if (this.held.length > 0) {
      // The chunks of recordings not (or no longer) bursting go; the rest keep their order.
      const now = performance.now();
      let kept = 0;
      for (let i = 0; i < this.held.length; i++) {
        const job = this.held[i]!;
        if (now < job.r.busyUntil) this.held[kept++] = job;
        else this.release(job);
      }
      this.held.length = kept;
    }
    if (this.held.length > 0 && this.quietTimer === null) {
      this.quietTimer = setTimeout(() => {
        this.quietTimer = null;
        this.pump();
      }, QUIET_MS);
      this.quietTimer.unref?.();
    }
  }

  private release(job: Held): void {
    this.heldBytes -= job.chunk.raw;
    if (!job.chunk.gone) this.submit(job);
  }

  private submit({ r, chunk, raw, marks }: Held): void {
    const done = this.compressor.encode(raw, marks).then(
      (out) => {
        if (chunk.gone) return;
        chunk.data = out.data;
        chunk.lastMs = out.lastMs;
        this.readyBytes += chunk.raw;
        // Written in batches during a burst, and as soon as the compressor is done otherwise.
        if (this.readyBytes >= this.flushAtBytes || this.compressing.size <= 1) this.soon();
      },
      () => {
        // The compressor failed (it logs why): this chunk is lost.
        if (chunk.gone) return;
        this.discard(r, chunk);
        this.droppedRaw += chunk.raw;
      },
    );
    this.compressing.add(done);
    void done.finally(() => this.compressing.delete(done));
  }

  private discard(r: Rec, chunk: Chunk): void {
    chunk.gone = true;
    const at = r.sealed.indexOf(chunk);
    if (at >= 0) r.sealed.splice(at, 1);
    r.queued -= chunk.raw;
    this.queuedTotal -= chunk.raw;
  }

  /** The memory caps: drop the recording's oldest pending chunks (never the newest one). */
  private dropOldest(r: Rec): void {
    let dropped = 0;
    while ((r.queued > this.cap || this.queuedTotal > this.totalCap) && r.sealed.length > 1) {
      const c = r.sealed[0]!;
      this.discard(r, c);
      dropped += c.raw;
    }
    if (dropped === 0) return;
    this.droppedRaw += dropped;
    if (!r.warnedDrop) {
      r.warnedDrop = true;
      this.log.warn({ recording: r.id, session: r.sessionId, channel: r.channel, droppedBytes: dropped, capBytes: this.cap, totalCapBytes: this.totalCap }, "recordings: pending output is over its cap (database unreachable or slower than the output); dropping the oldest output of this recording");
    }
  }

  /**
   * Every `flushMs`: what is buffered is sealed; the flush follows when the compressor is done
   * with it (or now, if it has nothing, or the database is failing and this is the retry).
   */
  private tick(): void {
    for (const r of this.recs.values()) if (r.endedAt === null) this.seal(r, false);
    this.pump();
    if (this.compressing.size === 0 || this.failing) void this.flushNow();
  }

  /** A flush as soon as the current I/O is done, unless flushes are failing (the tick retries). */
  private soon(): void {
    if (this.scheduled || this.failing || this.stopped) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.flushNow();
    });
  }

  /**
   * A flush of what is ready now (the tick's and `soon`'s): it does not wait for the
   * compressor. A call during a running flush runs one more pass after it.
   */
  private flushNow(): Promise<boolean> {
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

  private async flushOnce(): Promise<boolean> {
    const rows: object[] = [];
    const chunks: Array<{ recording_id: string; seq: number; data: Uint8Array; lastMs: number }> = [];
    const taken = new Map<Rec, Chunk[]>();
    const ends = new Set<Rec>();
    const involved: Rec[] = [];
    let takenBytes = 0;
    this.readyBytes = 0;
    for (const r of this.recs.values()) {
      let ready = 0;
      while (ready < r.sealed.length && r.sealed[ready]!.data !== null) ready++;
      const ending = r.endedAt !== null && !r.endWritten && ready === r.sealed.length;
      if (!r.inserted || ready > 0 || ending) involved.push(r);
      if (!r.inserted) {
        rows.push({ id: r.id, tenant_id: r.tenantId, session_id: r.sessionId, machine_id: r.machineId, channel: r.channel, cols: r.cols, rows: r.rows, started_at: r.startedAt });
      }
      if (ready > 0) {
        const cs = r.sealed.splice(0, ready);
        taken.set(r, cs);
        for (const c of cs) {
          r.queued -= c.raw;
          this.queuedTotal -= c.raw;
          takenBytes += c.raw;
          if (c.data!.length > 0) chunks.push({ recording_id: r.id, seq: c.seq, data: c.data!, lastMs: c.lastMs });
        }
      }
      if (ending) ends.add(r);
    }
    if (rows.length === 0 && chunks.length === 0 && ends.size === 0) return true;

    let result: { present: Set<string>; written: Set<string> };
    this.flushingBytes += takenBytes;
    try {
      result = await this.store.transaction(async (tx) => {
        const present = new Set<string>();
        const written = new Set<string>();
        if (rows.length > 0) {
          for (const { id } of await tx.query<{ id: string }>(INSERT_RECORDINGS, [JSON.stringify(rows)])) present.add(id);
        }
        for (let i = 0; i < chunks.length; i += CHUNKS_PER_STATEMENT) {
          const part = chunks.slice(i, i + CHUNKS_PER_STATEMENT);
          const params: unknown[] = [];
          for (const c of part) params.push(c.recording_id, c.seq, c.data, c.lastMs);
          for (const row of await tx.query<{ id: string; seq: number | null }>(insertChunks(part.length), params)) {
            if (row.seq === null) present.add(row.id);
            else written.add(`${row.id}/${row.seq}`);
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
          const ending = ends.has(r) && (r.inserted || present.has(r.id));
          if (n > 0 || ending) updates.push({ id: r.id, bytes, chunks: n, ended_at: ending ? r.endedAt : null });
        }
        if (updates.length > 0) await tx.query(UPDATE_RECORDINGS, [JSON.stringify(updates)]);
        return { present, written };
      });
    } catch (err) {
      // Nothing of this transaction happened: put the chunks back in front, in order.
      for (const [r, cs] of taken) this.putBack(r, cs);
      this.failedFlushes++;
      if (!this.failing) {
        this.failing = true;
        this.log.warn({ err: err instanceof Error ? err.message : String(err), recordings: this.recs.size }, "recordings: flush failed; keeping the output and retrying every tick");
      }
      return false;
    } finally {
      this.flushingBytes -= takenBytes;
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
        if (cs) this.putBack(r, cs);
        if (now - r.missingSince >= this.orphanMs) {
          this.forget(r);
          this.log.warn({ recording: r.id, session: r.sessionId, channel: r.channel }, "recordings: the session row never appeared; giving this recording up");
        } else complete = false;
        continue;
      }
      if (taken.has(r) && wasInserted && !result.present.has(r.id)) {
        // Written before, gone now: deleted while live (its session deleted).
        this.forget(r);
        this.log.info({ recording: r.id, session: r.sessionId }, "recordings: recording deleted while live; no longer recording it");
        continue;
      }
      if (ends.has(r)) r.endWritten = true;
      if (r.endWritten && r.sealed.length === 0) this.recs.delete(r.id);
    }
    return complete;
  }

  private putBack(r: Rec, cs: Chunk[]): void {
    r.sealed = r.sealed.length > 0 ? cs.concat(r.sealed) : cs;
    for (const c of cs) {
      r.queued += c.raw;
      this.queuedTotal += c.raw;
    }
    if (r.queued > this.cap || this.queuedTotal > this.totalCap) this.dropOldest(r);
  }

  /** A recording no longer written: what it holds is released. */
  private forget(r: Rec): void {
    for (const c of r.sealed.slice()) this.discard(r, c);
    this.recs.delete(r.id);
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
// compressed chunk is a bytea parameter: binary on PGlite (see pglite-in-thread.ts), hex
// (native Buffer encoding) with postgres.js. One statement text per row count.
const CHUNKS_PER_STATEMENT = 50;
const chunkStatements = new Map<number, string>();
function insertChunks(n: number): string {
  let sql = chunkStatements.get(n);
  if (sql) return sql;
  const rows = Array.from({ length: n }, (_, i) => `($${4 * i + 1}::uuid, $${4 * i + 2}::int, $${4 * i + 3}::bytea, $${4 * i + 4}::bigint)`).join(", ");
  sql = `
  with x (recording_id, seq, data, last_ms) as (
    values ${rows}
  ), k as (
    select x.* from x join recordings r on r.id = x.recording_id
  ), ins as (
    insert into recording_chunks (recording_id, seq, data, last_ms)
    select recording_id, seq, data, last_ms from k
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
