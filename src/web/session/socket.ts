import { Packr } from "msgpackr";
import { channelOf, dataFrame, isDataFrame, payloadOf } from "../../protocol/frames.ts";
// Types only: relay.ts holds the zod schemas, which stay out of the browser bundle.
import type { Access, ServerToViewer, ViewerToServer } from "../../protocol/relay.ts";
import { MAX_VIEWER_FRAME } from "./limits.ts";

/** Upload and download window (TRANSFER_WINDOW in src/protocol/relay.ts, duplicated to keep zod out of the bundle). */
export const TRANSFER_WINDOW = 1024 * 1024;
/** Upload chunk payload (FILE_CHUNK in src/protocol/relay.ts). */
export const FILE_CHUNK = 60 * 1024;
/** Session ended (VIEWER_CLOSE.SESSION_ENDED in relay.ts). */
export const CLOSE_SESSION_ENDED = 4100;

export type Msg<T extends ServerToViewer["t"]> = Extract<ServerToViewer, { t: T }>;
export type Opened = Msg<"ch.opened">;
export type Closed = Msg<"ch.closed">;
export type Listing = Msg<"files.listing">;
export type { Access, ServerToViewer, ViewerToServer };

type WithReq = Extract<ViewerToServer, { req: string }>;
/** A request as the caller writes it: the socket adds the `req`. */
export type RequestBody = WithReq extends infer T ? (T extends unknown ? Omit<T, "req"> : never) : never;

export interface ChannelHandlers {
  data?(payload: Uint8Array): void;
  ack?(bytes: number): void;
  closed?(m: Closed): void;
}

interface Pending {
  req: string;
  until: "ch.opened" | "files.listing";
  resolve(m: any): void;
  reject(e: Error): void;
}

/** An error answered on the viewer socket (VIEW_ONLY, CHANNEL_REFUSED, ENOENT…). */
export class ChannelError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/**
 * The viewer socket's address on this page's own origin: the minted `url` is built from
 * TETHER_PUBLIC_URL (the agents' address), which may be another host (refused by CSP
 * `connect-src 'self'`) or ws:// behind a TLS proxy (mixed content). Only its path and query
 * are taken.
 */
export function sameOriginSocketUrl(minted: string, loc: { protocol: string; host: string }): string {
  const u = new URL(minted, `http://${loc.host}`);
  return `${loc.protocol === "https:" ? "wss:" : "ws:"}//${loc.host}${u.pathname}${u.search}`;
}

const packr = new Packr({ useRecords: false });
/** Output of channels nobody handles yet is kept until a handler comes, up to this much in all… */
const ORPHAN_LIMIT = 4 * 1024 * 1024;
/** …and this much per channel (a terminal's tab needs its recent output, not megabytes of it). */
const ORPHAN_CHANNEL_LIMIT = 1024 * 1024;
/** How long what a closed channel left is kept for a handler still mounting. */
const ORPHAN_CLOSED_MS = 5_000;

type Orphan = Uint8Array | Closed | { ack: number };

/**
 * The viewer socket of one session (/ws/viewer, docs/PROTOCOL.md §4): msgpack control
 * messages, data frames (0x00 + u32 BE channel + payload), requests answered by `req`, and
 * per-channel handlers. Output that arrives before its channel's handler is registered (a tab
 * still mounting) is buffered and replayed to it.
 */
export interface SessionSnapshot {
  joined: Msg<"joined"> | null;
  state: Msg<"joined">["state"] | null;
  reason: Msg<"session.state">["reason"];
  viewers: Msg<"viewers">["viewers"];
  chat: Array<Msg<"chat">>;
}

export class ViewerSocket {
  readonly ready: Promise<void>;
  /** What the socket has said about the session so far: kept here, so nothing said before a component subscribed is lost. */
  snapshot: SessionSnapshot = { joined: null, state: null, reason: null, viewers: [], chat: [] };
  closeInfo: { code: number; reason: string } | null = null;
  private readonly ws: WebSocket;
  private readonly listeners = new Set<(m: ServerToViewer) => void>();
  private readonly closeListeners = new Set<(c: { code: number; reason: string }) => void>();
  private readonly handlers = new Map<number, ChannelHandlers>();
  private readonly orphans = new Map<number, { items: Orphan[]; bytes: number }>();
  private orphanBytes = 0;
  private readonly known = new Set<number>();
  private pending: Pending[] = [];
  private readonly prefix = Math.random().toString(36).slice(2, 8);
  private seq = 0;
  private closedByUs = false;

  constructor(url: string) {
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ready = new Promise((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("the viewer socket could not be opened"));
    });
    this.ws.onmessage = (e) => this.receive(new Uint8Array(e.data as ArrayBuffer));
    this.ws.onclose = (e) => {
      this.closeInfo = { code: e.code, reason: e.reason };
      for (const p of this.pending.splice(0)) p.reject(new ChannelError("DISCONNECTED", "the viewer socket closed"));
      for (const l of this.closeListeners) l(this.closeInfo);
    };
  }

  get open(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Whether a request id is one of this socket's own (other viewers' terminals and commands are broadcast too). */
  mine(req: string | null): boolean {
    return req !== null && req.startsWith(this.prefix + "-");
  }

  newReq(kind: string): string {
    return `${this.prefix}-${kind}-${++this.seq}`;
  }

  on(listener: (m: ServerToViewer) => void): () => void {
    this.listeners.add(listener);
    return () => void this.listeners.delete(listener);
  }

  onClose(listener: (c: { code: number; reason: string }) => void): () => void {
    this.closeListeners.add(listener);
    return () => void this.closeListeners.delete(listener);
  }

  /** Handles one channel's data, acks and end; what came before is replayed at once. */
  channel(channel: number, handlers: ChannelHandlers): () => void {
    this.handlers.set(channel, handlers);
    const queued = this.orphans.get(channel);
    if (queued) {
      this.dropOrphans(channel);
      for (const q of queued.items) {
        if (q instanceof Uint8Array) handlers.data?.(q);
        else if ("ack" in q) handlers.ack?.(q.ack);
        else handlers.closed?.(q);
      }
    }
    return () => {
      if (this.handlers.get(channel) === handlers) this.handlers.delete(channel);
    };
  }

  send(message: ViewerToServer): void {
    if (this.open) this.ws.send(packr.pack(message) as unknown as Uint8Array<ArrayBuffer>);
  }

  data(channel: number, payload: Uint8Array | string): void {
    if (this.open) this.ws.send(dataFrame(channel, payload) as Uint8Array<ArrayBuffer>);
  }

  /** Bytes queued in the socket, not yet on the wire. */
  get buffered(): number {
    return this.ws.bufferedAmount;
  }

  /**
   * Sends a message with a fresh `req` and resolves with its answer (`ch.opened`, or
   * `files.listing` for a list); an `error` for it, or a channel that ends before it opened,
   * rejects.
   */
  request<U extends Pending["until"]>(message: RequestBody, until: U): Promise<Msg<U>> {
    const req = this.newReq(message.t.replace(/\W/g, ""));
    return new Promise((resolve, reject) => {
      if (!this.open) return reject(new ChannelError("DISCONNECTED", "the viewer socket is not open"));
      const packed = packr.pack({ ...message, req }) as unknown as Uint8Array<ArrayBuffer>;
      // The server would close the socket on it (1009): refuse it here instead.
      if (packed.byteLength > MAX_VIEWER_FRAME) return reject(new ChannelError("TOO_LARGE", `the request is too large (${packed.byteLength} bytes; at most ${MAX_VIEWER_FRAME})`));
      this.pending.push({ req, until, resolve, reject });
      this.ws.send(packed);
    });
  }

  close(): void {
    this.closedByUs = true;
    this.ws.close(1000, "bye");
  }

  get closedOnPurpose(): boolean {
    return this.closedByUs;
  }

  private receive(frame: Uint8Array): void {
    if (isDataFrame(frame)) {
      const ch = channelOf(frame);
      const payload = payloadOf(frame);
      const h = this.handlers.get(ch);
      if (h) h.data?.(payload);
      else this.orphan(ch, payload);
      return;
    }
    let m: ServerToViewer;
    try {
      m = unpackMessage(frame);
    } catch {
      return;
    }
    switch (m.t) {
      case "joined":
        for (const c of m.channels) this.known.add(c.channel);
        this.snapshot = { ...this.snapshot, joined: m, state: m.state, viewers: m.viewers };
        break;
      case "session.state":
        this.snapshot = { ...this.snapshot, state: m.state, reason: m.reason };
        break;
      case "viewers":
        this.snapshot = { ...this.snapshot, viewers: m.viewers };
        break;
      case "chat": {
        if (m.id && this.snapshot.chat.some((c) => c.id === m.id)) break;
        // The history sent on joining may cross a message sent live: room ids (ULIDs) sort in time.
        const chat = [...this.snapshot.chat.slice(-499), m];
        const prev = chat.at(-2)?.id;
        if (m.id && prev && m.id < prev) chat.sort((x, y) => (x.id && y.id ? (x.id < y.id ? -1 : x.id > y.id ? 1 : 0) : 0));
        this.snapshot = { ...this.snapshot, chat };
        break;
      }
      case "ch.opened": {
        this.known.add(m.channel);
        const p = this.take(m.req, "ch.opened");
        p?.resolve(m);
        break;
      }
      case "files.listing":
        this.known.add(m.channel);
        this.take(m.req, "files.listing")?.resolve(m);
        break;
      case "error":
        if (m.req !== null) this.take(m.req, null)?.reject(new ChannelError(m.code, m.message));
        break;
      case "ch.ack": {
        const h = this.handlers.get(m.channel);
        if (h) h.ack?.(m.bytes);
        else this.orphan(m.channel, { ack: m.bytes });
        break;
      }
      case "ch.closed": {
        // A channel that ended before it opened names the request it was for (whichever viewer sent it).
        const p = m.req !== undefined ? this.take(m.req, null) : undefined;
        if (p) {
          p.reject(new ChannelError(m.error?.code ?? m.reason, m.error?.message ?? `the channel could not be opened (${m.reason.replace("_", " ")})`));
          break;
        }
        const h = this.handlers.get(m.channel);
        if (h) h.closed?.(m);
        else if (!this.known.has(m.channel)) this.dropOrphans(m.channel); // never ours to show
        else {
          // A tab may still be mounting for it: keep its end a little, then free what it left.
          this.orphan(m.channel, m);
          setTimeout(() => this.handlers.has(m.channel) || this.dropOrphans(m.channel), ORPHAN_CLOSED_MS);
        }
        break;
      }
    }
    for (const l of this.listeners) l(m);
  }

  private take(req: string | null, until: Pending["until"] | null): Pending | undefined {
    const i = this.pending.findIndex((p) => p.req === req && (until === null || p.until === until));
    return i < 0 ? undefined : this.pending.splice(i, 1)[0];
  }

  private orphan(channel: number, item: Orphan): void {
    const q = this.orphans.get(channel) ?? { items: [], bytes: 0 };
    if (item instanceof Uint8Array) {
      if (this.orphanBytes + item.byteLength > ORPHAN_LIMIT || q.bytes + item.byteLength > ORPHAN_CHANNEL_LIMIT) return;
      item = item.slice();
      this.orphanBytes += item.byteLength;
      q.bytes += item.byteLength;
    }
    q.items.push(item);
    this.orphans.set(channel, q);
  }

  private dropOrphans(channel: number): void {
    const q = this.orphans.get(channel);
    if (!q) return;
    this.orphans.delete(channel);
    this.orphanBytes -= q.bytes;
  }

  /** Bytes kept for channels nobody handles yet (for tests). */
  get orphaned(): { channels: number; bytes: number } {
    return { channels: this.orphans.size, bytes: this.orphanBytes };
  }
}

function unpackMessage(frame: Uint8Array): ServerToViewer {
  const m = packr.unpack(frame) as ServerToViewer;
  if (!m || typeof m !== "object" || typeof (m as { t?: unknown }).t !== "string") throw new Error("not a message");
  return m;
}
