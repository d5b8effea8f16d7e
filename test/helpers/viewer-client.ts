import { unpack } from "msgpackr";
import { encode } from "../../src/protocol/agent.ts";
import { channelOf, dataFrame, isDataFrame, payloadOf } from "../../src/protocol/frames.ts";

/**
 * A viewer on /ws/viewer as tests drive it: control messages decoded as they come, data
 * frames kept per channel, and waits with timeouts.
 */
export class TestViewer {
  readonly messages: any[] = [];
  readonly data = new Map<number, Uint8Array[]>();
  /** What arrived, in order: a control message's `t`, or `data` for a data frame. */
  readonly arrivals: string[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private readonly ws: WebSocket;
  private wakers: Array<() => void> = [];

  constructor(url: string, session: string, token: string) {
    this.ws = new WebSocket(`${url.replace(/^http/, "ws")}/ws/viewer?session=${session}&token=${encodeURIComponent(token)}`);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e) => {
      const frame = new Uint8Array(e.data as ArrayBuffer);
      if (isDataFrame(frame)) {
        const ch = channelOf(frame);
        if (!this.data.has(ch)) this.data.set(ch, []);
        this.data.get(ch)!.push(payloadOf(frame).slice());
        this.arrivals.push("data");
      } else {
        const m = unpack(frame);
        this.messages.push(m);
        this.arrivals.push(String(m?.t));
      }
      for (const w of this.wakers.splice(0)) w();
    };
    this.closed = new Promise((resolve) => (this.ws.onclose = (e) => {
      resolve({ code: e.code, reason: e.reason });
      for (const w of this.wakers.splice(0)) w();
    }));
  }

  async open(): Promise<void> {
    if (this.ws.readyState === WebSocket.OPEN) return;
    await new Promise<void>((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("viewer websocket error"));
    });
  }

  send(message: Record<string, unknown>): void {
    this.ws.send(new Uint8Array(encode(message as never)));
  }

  sendData(channel: number, payload: Uint8Array | string): void {
    this.ws.send(new Uint8Array(dataFrame(channel, payload)));
  }

  sendRaw(bytes: Uint8Array): void {
    this.ws.send(new Uint8Array(bytes));
  }

  /** Text received on a channel so far. */
  text(channel: number): string {
    return Buffer.concat(this.data.get(channel) ?? []).toString("utf8");
  }

  async waitFor<T = any>(pred: (m: any) => boolean, timeoutMs = 5_000, what = "message"): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (let seen = 0; ; ) {
      for (; seen < this.messages.length; seen++) if (pred(this.messages[seen])) return this.messages[seen];
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error(`viewer closed before ${what}: ${JSON.stringify(this.messages)}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(this.messages)}`);
      await new Promise<void>((r) => {
        this.wakers.push(r);
        setTimeout(r, 50);
      });
    }
  }

  async waitForText(channel: number, needle: string, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.text(channel).includes(needle)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${JSON.stringify(needle)} on channel ${channel}; got ${JSON.stringify(this.text(channel).slice(-500))}`);
      await new Promise<void>((r) => {
        this.wakers.push(r);
        setTimeout(r, 50);
      });
    }
  }

  close(): void {
    this.ws.close(1000, "bye");
  }
}
