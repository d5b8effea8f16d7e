import type { Logger } from "../log.ts";
import { type Check, packChecks, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, verifyEd25519Now } from "./ed25519.ts";

/**
 * Ed25519 signature checks (the agents' proofs of possession) on threads of their own
 * (ed25519-worker.ts), batched: the checks asked for in one tick go as a few messages. A check
 * is about 40 µs of CPU wherever it runs; through WebCrypto each one also cost two calls handed
 * to Bun's thread pool and their promises (importKey, verify): measured on 5,000 checks, 54–64
 * µs of CPU in all, 10 µs of it on the event loop, against 44–50 µs and about 1 µs here
 * (docs/PERFORMANCE.md, Agents). A reconnect storm is thousands of checks at once.
 *
 * Threads are started as checks need them, up to `maxThreads`. If one fails, or hangs (a batch
 * unanswered for ANSWER_WITHIN_MS), what the threads hold and every later check are done on the
 * calling thread, a batch per turn of the event loop: slower, never lost (as the recording
 * compressor falls back, src/recordings/compressor.ts). A thread has at most two batches at a
 * time, so it has the next one while this thread reads the answers of the last; it keeps the
 * process alive only while it has work.
 */
export interface VerifyRequest {
  id: number;
  /** `count` checks, packed (ed25519.ts, packChecks); transferred. */
  data: ArrayBuffer;
  count: number;
}
export interface VerifyReply {
  id: number;
  /** One byte per check, in order: 1 if the signature is valid. */
  valid: Uint8Array;
}

const MAX_BATCH = 256;
const MAX_IN_FLIGHT = 2;
/**
 * A batch (256 checks at most, about 10 ms) not answered in this long means a thread that hangs:
 * the verifier falls back to checking on the event loop, as for a thread that died. As long as
 * the handshake's own clock: past it, its sockets are closed anyway.
 */
const ANSWER_WITHIN_MS = 10_000;
/** One per core, at most 4: checks are CPU work, and a storm's checks keep two threads busy on two cores. */
const DEFAULT_THREADS = Math.max(1, Math.min(4, navigator.hardwareConcurrency));

interface Waiting extends Check {
  resolve(valid: boolean): void;
}

/** Bun's Worker has ref and unref (the DOM typing does not). */
type BunWorker = Worker & { ref(): void; unref(): void };

interface Thread {
  worker: BunWorker;
  /** Batches sent and not yet answered. */
  batches: number;
}

interface Sent {
  batch: Waiting[];
  thread: Thread;
  /** Fires `fail` if the thread has not answered in time. */
  deadline: ReturnType<typeof setTimeout>;
}

export interface VerifierOptions {
  /** The threads' script (tests give one that never answers). */
  workerUrl?: URL;
  /** How long a batch may go unanswered before the verifier stops using its threads. */
  answerWithinMs?: number;
}

export class Ed25519Verifier {
  private threads: Thread[] = [];
  /** Set once a thread failed, hung or could not start: checks are done here from then on. */
  private inThread = false;
  private closed = false;
  private queue: Waiting[] = [];
  private scheduled = false;
  /** Checking the queue on this thread (after a failure, or once closed). */
  private draining = false;
  private nextId = 1;
  /** Batches with a thread, by id: whose answers they wait for, and until when. */
  private readonly sent = new Map<number, Sent>();

  constructor(
    private readonly log: Pick<Logger, "error">,
    private readonly maxThreads = DEFAULT_THREADS,
    private readonly options: VerifierOptions = {},
  ) {
    if (!(Number.isInteger(maxThreads) && maxThreads >= 1)) throw new Error(`Ed25519Verifier: maxThreads must be an integer of at least 1 (${maxThreads})`);
  }

  /** Whether `signature` is `publicKey`'s (raw, base64) over `message`; false for malformed input. Never rejects. */
  verify(publicKey: string, message: Uint8Array, signature: Uint8Array): Promise<boolean> {
    const key = Buffer.from(publicKey, "base64");
    if (key.byteLength !== PUBLIC_KEY_BYTES || signature.byteLength !== SIGNATURE_BYTES) return Promise.resolve(false);
    if (this.inThread || this.closed) return Promise.resolve(verifyEd25519Now(key, message, signature));
    return new Promise<boolean>((resolve) => {
      this.queue.push({ publicKey: key, message, signature, resolve });
      this.schedule();
    });
  }

  /** Stops the threads; the checks they hold are done here. */
  close(): void {
    this.closed = true;
    this.stop();
  }

  private get full(): boolean {
    return this.sent.size >= MAX_IN_FLIGHT * this.maxThreads;
  }

  private schedule(): void {
    if (this.scheduled || this.full) return;
    // The rest of this tick's checks join the batch.
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.send();
    });
  }

  private send(): void {
    while (this.queue.length > 0 && !this.full && !this.inThread && !this.closed) {
      let thread: Thread;
      try {
        thread = this.leastBusy();
      } catch (err) {
        this.fail(err instanceof Error ? err.message : String(err));
        break;
      }
      // A burst is shared between the threads.
      const batch = this.queue.splice(0, Math.min(MAX_BATCH, Math.ceil(this.queue.length / this.maxThreads)));
      const id = this.nextId++;
      const answerWithinMs = this.options.answerWithinMs ?? ANSWER_WITHIN_MS;
      const deadline = setTimeout(() => this.fail(`a verifier thread did not answer a batch in ${answerWithinMs} ms`), answerWithinMs);
      deadline.unref?.();
      this.sent.set(id, { batch, thread, deadline });
      if (thread.batches++ === 0) thread.worker.ref();
      try {
        const data = packChecks(batch);
        thread.worker.postMessage({ id, data, count: batch.length } satisfies VerifyRequest, [data]);
      } catch (err) {
        // Not handed over: checked here with the rest (the batch is among those sent).
        this.fail(err instanceof Error ? err.message : String(err));
      }
    }
    // A thread failed, or the verifier was closed, meanwhile: what waits is checked here.
    if (this.inThread || this.closed) this.drainHere();
  }

  /** The thread with the fewest batches; a new one if every thread has work and there may be more. */
  private leastBusy(): Thread {
    let least: Thread | null = null;
    for (const t of this.threads) if (!least || t.batches < least.batches) least = t;
    if (least && (least.batches === 0 || this.threads.length >= this.maxThreads)) return least;
    const worker = new Worker(this.options.workerUrl ?? new URL("./ed25519-worker.ts", import.meta.url)) as BunWorker;
    const thread: Thread = { worker, batches: 0 };
    worker.unref();
    worker.onmessage = (e: MessageEvent<VerifyReply>) => {
      const { id, valid } = e.data;
      const sent = this.sent.get(id);
      if (!sent) return;
      this.sent.delete(id);
      clearTimeout(sent.deadline);
      if (--thread.batches === 0) worker.unref();
      for (let i = 0; i < sent.batch.length; i++) sent.batch[i]!.resolve(valid[i] === 1);
      // Checks asked for while the threads were busy go now, not a tick later.
      this.send();
    };
    worker.onerror = (e) => this.fail(e.message);
    worker.addEventListener("close", () => this.fail("the worker exited"));
    this.threads.push(thread);
    return thread;
  }

  private fail(why: string): void {
    if (this.inThread || this.closed) return;
    this.inThread = true;
    this.log.error({ err: why }, "ed25519: a verifier thread failed; checking signatures on the event loop from now on");
    this.stop();
  }

  private stop(): void {
    for (const { worker } of this.threads) worker.terminate();
    this.threads = [];
    for (const { batch, deadline } of this.sent.values()) {
      clearTimeout(deadline);
      this.queue.push(...batch);
    }
    this.sent.clear();
    this.drainHere();
  }

  /** Checks what waits here, a batch per turn of the event loop: a storm's checks would block it for seconds. */
  private drainHere(): void {
    if (this.draining) return;
    this.draining = true;
    const next = () => {
      for (const w of this.queue.splice(0, MAX_BATCH)) w.resolve(verifyEd25519Now(w.publicKey, w.message, w.signature));
      if (this.queue.length > 0) setImmediate(next);
      else this.draining = false;
    };
    next();
  }
}
