/**
 * Data frames of the session data plane (S5), on /ws/agent, /ws/support and /ws/viewer alike:
 *
 *   byte 0      0x00 (a control message is msgpack, whose first byte is never 0x00)
 *   bytes 1..4  channel id, u32 big-endian, chosen by the server when the channel opened
 *   bytes 5..   payload: terminal bytes, a file chunk, or command output (byte 5 is 1 for
 *               stdout, 2 for stderr, then the bytes)
 *
 * The relay reads the five header bytes and forwards the frame as it came, unparsed and
 * uncopied; nothing on the data plane goes through an actor.
 */
export const DATA_TAG = 0x00;
export const DATA_HEADER = 5;
export const MAX_CHANNEL = 0xffff_ffff;

export const isDataFrame = (frame: Uint8Array) => frame.byteLength >= DATA_HEADER && frame[0] === DATA_TAG;

export const channelOf = (frame: Uint8Array) =>
  ((frame[1]! << 24) | (frame[2]! << 16) | (frame[3]! << 8) | frame[4]!) >>> 0;

export const payloadOf = (frame: Uint8Array) => frame.subarray(DATA_HEADER);

export function dataFrame(channel: number, payload: Uint8Array | string): Uint8Array {
  const body = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  const frame = new Uint8Array(DATA_HEADER + body.byteLength);
  frame[0] = DATA_TAG;
  new DataView(frame.buffer).setUint32(1, channel >>> 0);
  frame.set(body, DATA_HEADER);
  return frame;
}

/** Command output: one byte naming the stream, then the bytes. */
export const STDOUT = 1;
export const STDERR = 2;
export function commandFrame(channel: number, stream: typeof STDOUT | typeof STDERR, bytes: Uint8Array): Uint8Array {
  const payload = new Uint8Array(1 + bytes.byteLength);
  payload[0] = stream;
  payload.set(bytes, 1);
  return dataFrame(channel, payload);
}

/** A fresh channel id: random, so ids of different sessions on one agent need no coordination. */
export const newChannelId = () => crypto.getRandomValues(new Uint32Array(1))[0]! || 1;
