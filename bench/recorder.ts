/**
 * What recording costs the relay's thread per MiB of terminal output: `bun bench/recorder.ts`.
 *
 * The relay hands every terminal frame to `Recorder.output` (src/recordings/recorder.ts) on
 * its own thread, between receiving it and the next frame. This times that call alone, on this
 * thread, for BENCH_RECORDER_MIB (default 64) MiB of log lines with colour escapes in 16 KiB
 * frames (as bench/relay.ts sends), three ways, interleaved, best and median of BENCH_REPS
 * (default 7):
 *
 * - baseline: a loop over the same frames that reads one byte of each (what the relay's own
 *   routing touches), so the figures below are what the recorder adds;
 * - copied: `output(id, payload)`, the bytes copied into the recording's buffers (now the path
 *   of output under 4 KiB, and of callers that keep their bytes; until the twelfth session every
 *   frame was copied, into pooled chunk buffers: run this file in a checkout of that code to
 *   measure it, where "given" copies too);
 * - given: `output(id, payload, true)`, as the relay calls it now: frames of 4 KiB and more are
 *   kept as they are and transferred to the compressor thread.
 *
 * Each frame is a fresh buffer with the 5-byte data-frame header before its payload, as Bun
 * hands the relay a received message; they are allocated (and touched) before the clock starts.
 * The store is the bench's no-op store (bench/noop-store.ts): writing is not what is measured.
 * The compressor is the real worker thread; the recorder holds a burst's chunks back from it
 * until the burst ends, so it does not run while the clock does (as in production).
 */
import { silentLogger } from "../src/log.ts";
import { Recorder } from "../src/recordings/recorder.ts";
import { openNoopStore } from "./noop-store.ts";

const MiB = 1024 * 1024;
const FRAME = 16 * 1024;
const TOTAL = Number(process.env.BENCH_RECORDER_MIB ?? 64) * MiB;
const REPS = Number(process.env.BENCH_REPS ?? 7);

const line = (i: number) => `\x1b[32m2026-11-24T12:00:00.${String(i % 1000).padStart(3, "0")}Z\x1b[0m INFO request ${i} served in ${i % 97} ms\r\n`;
const text = new TextEncoder().encode(Array.from({ length: Math.ceil(FRAME / 40) + 100 }, (_, i) => line(i)).join(""));

function frames(): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let sent = 0; sent < TOTAL; sent += FRAME) {
    const f = new Uint8Array(5 + FRAME);
    f.set(text.subarray(0, FRAME), 5);
    out.push(f);
  }
  return out;
}

const recorder = new Recorder(openNoopStore(), silentLogger, { flushMs: 3_600_000 });
let sink = 0;

async function run(kind: "baseline" | "copied" | "given"): Promise<number> {
  const fs = frames();
  const id = recorder.start({ tenantId: "00000000-0000-0000-0000-000000000000", sessionId: "00000000-0000-0000-0000-000000000001", machineId: null, channel: 1, cols: 80, rows: 24 });
  const t0 = performance.now();
  if (kind === "baseline") for (const f of fs) sink += f[5]!;
  else if (kind === "copied") for (const f of fs) recorder.output(id, f.subarray(5));
  else for (const f of fs) recorder.output(id, f.subarray(5), true);
  const ms = performance.now() - t0;
  await recorder.end(id);
  await recorder.flush();
  return ms / (TOTAL / MiB);
}

const kinds = ["baseline", "copied", "given"] as const;
const times: Record<(typeof kinds)[number], number[]> = { baseline: [], copied: [], given: [] };
await run("copied"); // warm-up: the JIT, the compressor thread
await run("given");
for (let rep = 0; rep < REPS; rep++) {
  for (const kind of rep % 2 === 0 ? kinds : [...kinds].reverse()) times[kind].push(await run(kind));
}
await recorder.stop();

const best = (xs: number[]) => Math.min(...xs);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const f3 = (x: number) => x.toFixed(3);
console.log(`Bun ${Bun.version}; ${TOTAL / MiB} MiB in ${FRAME / 1024} KiB frames, ${REPS} reps; ms per MiB on the relay's thread (best / median)`);
for (const kind of kinds) console.log(`  ${kind.padEnd(8)} ${f3(best(times[kind]))} / ${f3(median(times[kind]))}`);
const added = (kind: "copied" | "given") => median(times[kind]) - median(times.baseline);
console.log(`  recording adds (median): copied ${f3(added("copied"))} ms/MiB, given ${f3(added("given"))} ms/MiB; given / copied ${(added("given") / added("copied")).toFixed(2)}`);
if (sink < 0) console.log(sink);
