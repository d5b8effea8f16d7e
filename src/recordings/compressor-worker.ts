/**
 * The recording compressor's thread (see compressor.ts). It turns raw chunks into stored ones
 * (chunk-codec.ts) at the lowest CPU priority, so a burst of terminal output is relayed at full
 * speed and compressed when the CPU has time, instead of competing with the relay for it.
 */
import { encodeChunk } from "./chunk-codec.ts";
import type { CompressReply, CompressRequest } from "./compressor.ts";
import { lowerThisThreadsPriority } from "./thread-priority.ts";

declare const self: Worker;

lowerThisThreadsPriority();

self.onmessage = (e: MessageEvent<CompressRequest>) => {
  const m = e.data;
  let reply: CompressReply;
  try {
    const out = encodeChunk(m.parts.map(([i, offset, length]) => new Uint8Array(m.buffers[i]!, offset, length)), m.marks);
    reply = { id: m.id, data: out.data, lastMs: out.lastMs };
  } catch (err) {
    reply = { id: m.id, error: err instanceof Error ? err.message : String(err) };
  }
  if ("data" in reply) self.postMessage(reply, [reply.data.buffer as ArrayBuffer]);
  else self.postMessage(reply);
};
