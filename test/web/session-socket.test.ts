import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Packr } from "msgpackr";
import { dataFrame } from "../../src/protocol/frames.ts";
import { MAX_VIEWER_FRAME as PROTOCOL_MAX_FRAME, ViewerToServer } from "../../src/protocol/relay.ts";
import { argvProblem, MAX_ARG, MAX_ARGS, MAX_PATH, MAX_VIEWER_FRAME, pathProblem, TERM_INPUT_PIECE, utf8Pieces } from "../../src/web/session/limits.ts";
import { httpUrl, terminalLinks } from "../../src/web/session/links.ts";
import { ChannelError, sameOriginSocketUrl, ViewerSocket } from "../../src/web/session/socket.ts";

/**
 * The session page's socket and helpers without a browser: a scripted WebSocket stands in for
 * the server, so each message's handling can be checked on its own.
 */
const packr = new Packr({ useRecords: false });

class FakeWebSocket {
  static readonly OPEN = 1;
  static last: FakeWebSocket;
  readyState = 0;
  binaryType = "";
  readonly sent: Uint8Array[] = [];
  onopen: (() => void) | null = null;
  onerror: (() => void) | null = null;
  onclose: ((e: { code: number; reason: string }) => void) | null = null;
  onmessage: ((e: { data: ArrayBuffer }) => void) | null = null;
  constructor(readonly url: string) {
    FakeWebSocket.last = this;
  }
  send(bytes: Uint8Array) {
    this.sent.push(new Uint8Array(bytes));
  }
  close() {}
  accept() {
    this.readyState = 1;
    this.onopen?.();
  }
  deliver(m: Record<string, unknown> | Uint8Array) {
    const bytes = m instanceof Uint8Array ? m : (packr.pack(m) as Uint8Array);
    this.onmessage?.({ data: Uint8Array.from(bytes).buffer as ArrayBuffer }); // a copy: msgpackr packs into a shared pool
  }
}

async function connected(): Promise<{ socket: ViewerSocket; ws: FakeWebSocket }> {
  const socket = new ViewerSocket("ws://server/ws/viewer?session=s&token=t");
  const ws = FakeWebSocket.last;
  ws.accept();
  await socket.ready;
  return { socket, ws };
}

/** Whether a promise has settled yet (after the microtasks queued so far). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  await Bun.sleep(0);
  return done;
}

describe("the session page's viewer socket", () => {
  const realWebSocket = globalThis.WebSocket;
  beforeAll(() => void ((globalThis as any).WebSocket = FakeWebSocket));
  afterAll(() => void ((globalThis as any).WebSocket = realWebSocket));

  test("a channel closed before it opened settles exactly the request it names, whatever the reason; another viewer's does not", async () => {
    const { socket, ws } = await connected();
    const mine = socket.request({ t: "term.open", cols: 80, rows: 24 }, "ch.opened");
    mine.catch(() => {});
    const req = (packr.unpack(ws.sent[0]!) as { req: string }).req;
    // Another viewer's terminal failed to start: broadcast to every viewer, with its req.
    ws.deliver({ t: "ch.closed", channel: 7, req: "other-termopen-1", reason: "error", error: { code: "PTY", message: "theirs" } });
    expect(await settled(mine)).toBe(false);
    // Ours, lost with the agent before it opened.
    ws.deliver({ t: "ch.closed", channel: 8, req, reason: "agent_lost" });
    const err = await mine.then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(ChannelError);
    expect((err as ChannelError).code).toBe("agent_lost");
  });

  test("output of a channel nobody handles is capped per channel and freed when the channel closes", async () => {
    const { socket, ws } = await connected();
    // Another viewer's terminal, announced; its tab not mounted yet.
    ws.deliver({ t: "ch.opened", req: null, channel: 10, type: "term" });
    const chunk = new Uint8Array(60 * 1024).fill(65);
    for (let i = 0; i < 40; i++) ws.deliver(dataFrame(10, chunk));
    expect(socket.orphaned.bytes).toBeLessThanOrEqual(1024 * 1024);
    // Another channel still gets its share.
    ws.deliver({ t: "ch.opened", req: null, channel: 11, type: "term" });
    ws.deliver(dataFrame(11, "prompt$ "));
    const got: string[] = [];
    socket.channel(11, { data: (p) => got.push(new TextDecoder().decode(p)) });
    expect(got).toEqual(["prompt$ "]);
    let replayed = 0;
    const off = socket.channel(10, { data: (p) => (replayed += p.byteLength) });
    expect(replayed).toBeGreaterThan(0);
    expect(replayed).toBeLessThanOrEqual(1024 * 1024);
    expect(socket.orphaned).toEqual({ channels: 0, bytes: 0 });
    off();

    // Output of a channel never named to this viewer, then its end: nothing is kept.
    ws.deliver(dataFrame(12, chunk));
    expect(socket.orphaned.bytes).toBe(chunk.byteLength);
    ws.deliver({ t: "ch.closed", channel: 12, reason: "exit", exit_code: 0 });
    expect(socket.orphaned).toEqual({ channels: 0, bytes: 0 });
  });

  test("a request larger than a viewer frame is refused on the page, never sent", async () => {
    const { socket, ws } = await connected();
    const err = await socket.request({ t: "cmd.run", argv: Array.from({ length: 20 }, () => "x".repeat(4000)) }, "ch.opened").then(() => null, (e: unknown) => e);
    expect((err as ChannelError).code).toBe("TOO_LARGE");
    expect(ws.sent).toEqual([]);
  });
});

describe("the session page's helpers", () => {
  test("the viewer socket goes to the page's own origin, whatever host the token's url names", () => {
    const minted = "ws://agents.example.com/ws/viewer?session=abc&token=x.y.z";
    expect(sameOriginSocketUrl(minted, { protocol: "https:", host: "console.example.org:8443" })).toBe("wss://console.example.org:8443/ws/viewer?session=abc&token=x.y.z");
    expect(sameOriginSocketUrl(minted, { protocol: "http:", host: "127.0.0.1:3000" })).toBe("ws://127.0.0.1:3000/ws/viewer?session=abc&token=x.y.z");
  });

  test("terminal input is cut into pieces of at most 60 KiB of UTF-8, never inside a character", () => {
    const text = "plain ascii é € 😀 \n".repeat(8000);
    const pieces = utf8Pieces(text);
    expect(pieces.length).toBeGreaterThan(2);
    const strict = new TextDecoder("utf-8", { fatal: true });
    let joined = "";
    for (const p of pieces) {
      expect(p.byteLength).toBeLessThanOrEqual(TERM_INPUT_PIECE);
      expect(dataFrame(1, p).byteLength).toBeLessThanOrEqual(PROTOCOL_MAX_FRAME);
      joined += strict.decode(p);
    }
    expect(joined).toBe(text);
    expect(utf8Pieces("")).toEqual([]);
    expect(utf8Pieces("ls\r").map((p) => new TextDecoder().decode(p))).toEqual(["ls\r"]);
  });

  test("the page's limits are the protocol's", () => {
    expect(MAX_VIEWER_FRAME).toBe(PROTOCOL_MAX_FRAME);
    const run = (argv: string[]) => ViewerToServer.safeParse({ t: "cmd.run", req: "r", argv }).success;
    const list = (path: string) => ViewerToServer.safeParse({ t: "files.list", req: "r", path }).success;
    for (const argv of [Array(MAX_ARGS).fill("a"), Array(MAX_ARGS + 1).fill("a"), ["a".repeat(MAX_ARG)], ["echo", "a".repeat(MAX_ARG + 1)]]) {
      expect(argvProblem(argv) === null).toBe(run(argv));
    }
    for (const path of ["/", "/".repeat(MAX_PATH), "/".repeat(MAX_PATH + 1)]) expect(pathProblem(path) === null).toBe(list(path));
  });

  test("a terminal link opens only if it is http or https, in a tab without opener", () => {
    expect(httpUrl("https://example.com/a?b")).toBe("https://example.com/a?b");
    for (const bad of ["javascript:alert(1)", "data:text/html,<script>1</script>", "file:///etc/passwd", "vbscript:x", "not a url"]) expect(httpUrl(bad)).toBeNull();
    const g = globalThis as any;
    const saved = { window: g.window, confirm: g.confirm };
    const opened: unknown[][] = [];
    g.window = { open: (...a: unknown[]) => opened.push(a) };
    g.confirm = () => true;
    try {
      terminalLinks.activate({} as MouseEvent, "javascript:alert(document.cookie)");
      expect(opened).toEqual([]);
      terminalLinks.activate({} as MouseEvent, "https://example.com/");
      expect(opened).toEqual([["https://example.com/", "_blank", "noopener,noreferrer"]]);
    } finally {
      g.window = saved.window;
      g.confirm = saved.confirm;
    }
  });
});
