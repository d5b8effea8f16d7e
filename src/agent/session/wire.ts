import { Packr } from "msgpackr";
import { decode } from "../../protocol/agent.ts";
import { isDataFrame } from "../../protocol/frames.ts";
import type { z } from "zod";
import { ServerToAgent, type AgentToServer } from "../../protocol/relay.ts";
import type { SupportHello } from "../../protocol/support.ts";

/**
 * What the agent puts on the session plane: a control message (msgpack, relay.ts) or a data
 * frame (frames.ts, already encoded). Both the managed socket (/ws/agent) and the attended one
 * (/ws/support) carry them the same way.
 */
export type Outbound = AgentToServer | Uint8Array;
export type Send = (out: Outbound) => void;

// Same options as src/protocol/agent.ts (plain msgpack maps): its `encode` is typed for the
// handshake messages only, so the session messages are packed here.
const packr = new Packr({ useRecords: false });

export function encodeOutbound(out: Outbound): Uint8Array<ArrayBuffer> {
  return (out instanceof Uint8Array ? out : packr.pack(out)) as Uint8Array<ArrayBuffer>;
}

/** The attended agent's hello on /ws/support. */
export function encodeSupportHello(hello: z.infer<typeof SupportHello>): Uint8Array<ArrayBuffer> {
  return packr.pack(hello) as Uint8Array<ArrayBuffer>;
}

/** A frame from the server after the handshake: a data frame, a session message, or neither. */
export type Inbound = { kind: "data"; frame: Uint8Array } | { kind: "message"; message: ServerToAgent } | null;

export function decodeInbound(frame: Uint8Array): Inbound {
  if (isDataFrame(frame)) return { kind: "data", frame };
  const message = decode(ServerToAgent, frame);
  return message ? { kind: "message", message } : null;
}

/** A WebSocket frame as bytes (binary only; text frames are not protocol frames). */
export function frameBytes(data: unknown): Uint8Array | null {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (data instanceof Uint8Array) return data;
  if (typeof data === "string") return null;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}
