/**
 * Room subscribers as a client would write them: an SSE reader over fetch (with Last-Event-ID
 * resume) and a WebSocket reader. Both collect message ids in arrival order.
 */
export interface SseEvent {
  id?: string;
  event: string;
  data: string;
}

export interface RoomReader {
  events: SseEvent[];
  /** Message ids in arrival order. */
  ids: string[];
  /** Set once the server said history is done. */
  live: boolean;
  closed: Promise<{ code?: number; reason?: string }>;
  waitFor(pred: () => boolean, ms?: number, what?: string): Promise<void>;
  stop(): void;
}

async function waitFor(pred: () => boolean, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

/** Parses an SSE byte stream into events (comments dropped). */
export function parseSse(chunk: string, state: { buf: string }): SseEvent[] {
  state.buf += chunk;
  const out: SseEvent[] = [];
  let sep: number;
  while ((sep = state.buf.indexOf("\n\n")) >= 0) {
    const block = state.buf.slice(0, sep);
    state.buf = state.buf.slice(sep + 2);
    const ev: SseEvent = { event: "message", data: "" };
    let any = false;
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      any = true;
      if (field === "id") ev.id = value;
      else if (field === "event") ev.event = value;
      else if (field === "data") ev.data = ev.data ? `${ev.data}\n${value}` : value;
    }
    if (any) out.push(ev);
  }
  return out;
}

export async function sseReader(url: string, token: string, opts: { lastEventId?: string; after?: string } = {}): Promise<RoomReader & { status: number; body: string }> {
  const ctl = new AbortController();
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, accept: "text/event-stream" };
  if (opts.lastEventId) headers["last-event-id"] = opts.lastEventId;
  const res = await fetch(opts.after ? `${url}?after=${opts.after}` : url, { headers, signal: ctl.signal });
  const reader: RoomReader & { status: number; body: string } = {
    status: res.status, body: "", events: [], ids: [], live: false, closed: Promise.resolve({}),
    waitFor, stop: () => ctl.abort(),
  };
  if (res.status !== 200) {
    reader.body = await res.text();
    return reader;
  }
  const state = { buf: "" };
  const decoder = new TextDecoder();
  reader.closed = (async () => {
    let closed: { code?: number; reason?: string } = {};
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        for (const ev of parseSse(decoder.decode(chunk, { stream: true }), state)) {
          reader.events.push(ev);
          if (ev.event === "message" && ev.id) reader.ids.push(ev.id);
          if (ev.event === "live") reader.live = true;
          if (ev.event === "closed") closed = JSON.parse(ev.data);
        }
      }
    } catch {
      // aborted
    }
    return closed;
  })();
  return reader;
}

export async function wsReader(url: string, token: string, after?: string): Promise<RoomReader & { ws: WebSocket; frames: any[] }> {
  const ws = new WebSocket(after ? `${url}?after=${after}` : url, { headers: { authorization: `Bearer ${token}` } } as never);
  const reader = { events: [] as SseEvent[], ids: [] as string[], live: false, frames: [] as any[], ws, waitFor, stop: () => ws.close(), closed: null as never as Promise<{ code?: number; reason?: string }> };
  reader.closed = new Promise((r) => (ws.onclose = (e) => r({ code: e.code, reason: e.reason })));
  ws.onmessage = (e) => {
    const f = JSON.parse(String(e.data));
    reader.frames.push(f);
    if (f.t === "message") reader.ids.push(f.message.id);
    if (f.t === "live") reader.live = true;
  };
  await new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("room socket refused"));
  });
  return reader;
}
