import type { Logger } from "../log.ts";
import { type EncodedChunk, encodeChunk, type Mark } from "./chunk-codec.ts";

/**
 * Where recording chunks are encoded (chunk-codec.ts): a worker thread at the lowest CPU
 * priority (compressor-worker.ts), started on the first chunk. If the worker fails, what it
 * held is lost (the promises reject) and later chunks are encoded on the calling thread:
 * recording degrades, it never stops.
 */
export interface ChunkCompressor {
  /**
   * The chunk's output is `raw`'s parts in order. Each part's whole ArrayBuffer is handed over
   * (transferred to the worker): the caller must not use any of them again.
   */
  encode(raw: readonly Uint8Array[], marks: Mark[]): Promise<EncodedChunk>;
  close(): void;
}

export interface CompressRequest {
  id: number;
  /** The transferred buffers, and the output as [buffer index, offset, length] in order. */
  buffers: ArrayBuffer[];
  parts: Array<[number, number, number]>;
  marks: Mark[];
}
export type CompressReply = { id: number; data: Uint8Array; lastMs: number } | { id: number; error: string };

/** Encoding on the calling thread: the fallback, and what tests compare with. */
export class InThreadCompressor implements ChunkCompressor {
  encode(raw: readonly Uint8Array[], marks: Mark[]): Promise<EncodedChunk> {
    try {
      return Promise.resolve(encodeChunk(raw, marks));
    } catch (err) {
      return Promise.reject(err);
    }
  }
  close(): void {}
}

export class WorkerCompressor implements ChunkCompressor {
  private worker: Worker | null = null;
  private fallback: InThreadCompressor | null = null;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (c: EncodedChunk) => void; reject: (e: Error) => void }>();
  private closed = false;

  constructor(private readonly log: Logger) {}

  encode(raw: readonly Uint8Array[], marks: Mark[]): Promise<EncodedChunk> {
    if (this.fallback || this.closed) return (this.fallback ??= new InThreadCompressor()).encode(raw, marks);
    let worker: Worker;
    try {
      worker = this.start();
    } catch (err) {
      // No thread to be had: never an exception into the relay, compress here instead.
      this.fail(err instanceof Error ? err.message : String(err));
      return this.encode(raw, marks);
    }
    const id = this.nextId++;
    return new Promise<EncodedChunk>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const req: CompressRequest = { id, buffers: [], parts: [], marks };
      const index = new Map<ArrayBufferLike, number>();
      for (const p of raw) {
        let i = index.get(p.buffer);
        if (i === undefined) {
          i = req.buffers.push(p.buffer as ArrayBuffer) - 1;
          index.set(p.buffer, i);
        }
        req.parts.push([i, p.byteOffset, p.length]);
      }
      try {
        worker.postMessage(req, req.buffers);
      } catch (err) {
        // Not sent (a buffer that cannot be transferred): nothing was handed over, so it is
        // compressed here instead; the thread stays for the next chunk.
        this.pending.delete(id);
        this.log.warn({ err: err instanceof Error ? err.message : String(err) }, "recordings: a chunk could not be handed to the compressor thread; compressed on this thread");
        new InThreadCompressor().encode(raw, marks).then(resolve, reject);
      }
    });
  }

  /** Stops the worker; chunks still in it are lost (the recorder waits for them before closing). */
  close(): void {
    this.closed = true;
    this.worker?.terminate();
    this.worker = null;
    this.failPending("the recording compressor was closed");
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL("./compressor-worker.ts", import.meta.url));
    // Bun's Worker has unref (the DOM typing does not): an idle compressor keeps no process alive.
    (worker as unknown as { unref(): void }).unref();
    worker.onmessage = (e: MessageEvent<CompressReply>) => {
      const r = e.data;
      const p = this.pending.get(r.id);
      if (!p) return;
      this.pending.delete(r.id);
      if ("error" in r) p.reject(new Error(r.error));
      else p.resolve({ data: r.data, lastMs: r.lastMs });
    };
    worker.onerror = (e) => this.fail(e.message);
    worker.addEventListener("close", () => this.fail("the worker exited"));
    this.worker = worker;
    return worker;
  }

  private fail(why: string): void {
    if (this.closed || this.fallback) return;
    this.log.error({ err: why, lost_chunks: this.pending.size }, "recordings: the compressor thread failed; compressing on the relay's thread from now on");
    this.fallback = new InThreadCompressor();
    this.worker?.terminate();
    this.worker = null;
    this.failPending(`the recording compressor failed: ${why}`);
  }

  private failPending(why: string): void {
    for (const p of this.pending.values()) p.reject(new Error(why));
    this.pending.clear();
  }
}
