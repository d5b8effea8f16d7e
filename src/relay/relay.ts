import type { ActorSystem } from "../actors/system.ts";
import type { Logger } from "../log.ts";
import { decode, encode } from "../protocol/agent.ts";
import { channelOf, isDataFrame, newChannelId } from "../protocol/frames.ts";
import {
  AgentToServer, type ChannelType, FILE_CHUNK, MAX_CHAT_FROM, MAX_CHAT_TEXT, MAX_VIEWER_FRAME, type ServerToAgent, type ServerToViewer, TRANSFER_WINDOW, VIEWER_CLOSE, ViewerToServer,
} from "../protocol/relay.ts";
import type { RoomMessage } from "../protocol/rooms.ts";
import { INPUT_LIMITS, TokenBucket } from "./throttle.ts";

/**
 * The data plane (S5): live sockets of agents and viewers, and the channel routes between
 * them. A session actor decides (who may watch, which channel may open); the relay carries the
 * bytes. A data frame is routed by its five-byte header and forwarded as it came, to every
 * viewer for terminals and command output, to the requesting viewer for a download; no actor
 * sees it. A viewer that falls more than `slowViewerBytes` behind is disconnected with a
 * reason; nobody waits for it. Viewer input is throttled per viewer.
 */
export interface Link {
  /** Sends `frame` now, or copies it to send later: a terminal frame goes to the recorder after. */
  send(frame: Uint8Array): number;
  buffered(): number;
  close(code: number, reason: string): void;
  /** Stop and start reading the socket (TCP pushes back to the peer); agents' links only. */
  pause?(): void;
  resume?(): void;
}

export interface ViewerLink extends Link {
  viewerId: string;
  sessionId: string;
  userId: string;
  name: string;
  access: "control" | "view";
  /** An end user on their own session (see ViewerClaims). */
  endUser?: boolean;
}

/** The recorder's hot-path surface (src/recordings/recorder.ts). */
export interface RecorderPort {
  /** `at`: when the channel opened (epoch ms); event times count from it. */
  start(r: { tenantId: string; sessionId: string; machineId: string | null; channel: number; cols: number; rows: number; at?: number }): string;
  /** False: the recording is behind; pause the source until `behind(id)` is false after a flush. */
  /** `owned`: the caller gives up `bytes` and its whole buffer, which may be kept and transferred. */
  output(id: string, bytes: Uint8Array, owned?: boolean): boolean | void;
  behind?(id: string): boolean;
  onFlushed?(f: () => void): void;
  resize(id: string, cols: number, rows: number): void;
  end(id: string): void;
}

interface ChannelRoute {
  channel: number;
  sessionId: string;
  type: ChannelType;
  viewerId: string;
  req: string | null;
  /** The agent confirmed it (ch.opened, or a listing): until then its ch.closed carries `req`. */
  opened: boolean;
  recording: string | null;
  /** A terminal to record once the agent has it (see startRecording); null once started, or if not recorded. */
  record: PendingRecording | null;
  /** The agent connection it was opened on: a resume accounts only for those of earlier ones. */
  conn: string | null;
  /** Upload: bytes from the viewer, and bytes the agent acknowledged. */
  received: number;
  acked: number;
}

interface PendingRecording {
  tenantId: string;
  machineId: string | null;
  /** When the channel opened, epoch ms: the recording's start, as if it had started then. */
  at: number;
  cols: number;
  rows: number;
  /** A resize asked for before the agent confirmed the terminal. */
  resized: [cols: number, rows: number] | null;
}

interface SessionRoute {
  id: string;
  tenantId: string;
  machineId: string | null;
  agentConn: string | null;
  viewers: Map<string, ViewerState>;
  /** In an end-user session, the end user's room member: their chat is labelled as theirs, not a technician's. */
  endUser: string | null;
}

interface ViewerState {
  link: ViewerLink;
  frames: TokenBucket;
  bytes: TokenBucket;
  control: TokenBucket;
  refusedInARow: number;
  lastThrottleNotice: number;
}

interface AgentState {
  link: Link;
  machineId: string | null;
  sessions: Set<string>;
  /** While reading is paused for the recorder: the recordings that are behind, and the deadline timer. */
  pausedFor: Set<string> | null;
  pauseTimer: ReturnType<typeof setTimeout> | null;
}

/**
 * The longest an agent's socket stays paused for a recorder that is behind. A database that
 * hangs must not hang the session: past this, reading resumes and the recorder's memory cap
 * (which drops the oldest output, with a warning) is what bounds memory.
 */
export const MAX_RECORDER_PAUSE_MS = 2_000;

export interface RelayOptions {
  slowViewerBytes: number;
  maxUploadBytes: number;
  now?: () => number;
}

export const DEFAULT_RELAY_OPTIONS: RelayOptions = { slowViewerBytes: 4 * 1024 * 1024, maxUploadBytes: 100 * 1024 * 1024 };

export class Relay {
  private readonly agents = new Map<string, AgentState>();
  private readonly sessions = new Map<string, SessionRoute>();
  private readonly channels = new Map<number, ChannelRoute>();
  private readonly now: () => number;
  /** Counters for /metrics and tests. */
  readonly stats = { slowViewersDropped: 0, inputThrottled: 0, framesRelayed: 0, recorderPauses: 0, recorderPauseTimeouts: 0 };
  /** Whether terminal channels opened from now on are recorded (on whenever there is a recorder). */
  private recording: boolean;

  constructor(
    private readonly system: Pick<ActorSystem, "send" | "ask">,
    readonly recorder: RecorderPort | null,
    private readonly log: Logger,
    private readonly options: RelayOptions = DEFAULT_RELAY_OPTIONS,
  ) {
    this.now = options.now ?? (() => performance.now());
    this.recording = recorder !== null;
    recorder?.onFlushed?.(() => this.resumeCaughtUp());
  }

  /**
   * Records the terminals opened from now on, or not (channels already open keep their
   * recording). The product always records; bench/relay.ts measures what that costs with this.
   */
  setRecording(on: boolean): void {
    this.recording = on && this.recorder !== null;
  }

  // ---- agents -------------------------------------------------------------------------------

  addAgent(conn: string, link: Link, machineId: string | null): void {
    this.agents.set(conn, { link, machineId, sessions: new Set(), pausedFor: null, pauseTimer: null });
  }

  /** The agent's socket closed: its sessions are told (the actor starts the grace period). */
  removeAgent(conn: string): void {
    const agent = this.agents.get(conn);
    if (!agent) return;
    this.agents.delete(conn);
    if (agent.pauseTimer) clearTimeout(agent.pauseTimer);
    for (const sessionId of agent.sessions) {
      const route = this.sessions.get(sessionId);
      if (route?.agentConn === conn) route.agentConn = null;
      this.tell(`session/${sessionId}`, { type: "agent.detached", conn, resumable: true });
    }
  }

  hasAgent(conn: string): boolean {
    return this.agents.has(conn);
  }

  /**
   * Binds a session to the agent connection the actor accepted. That connection may have closed
   * since (between its binding and this, the actor's commit): `removeAgent` did not know the
   * session then, so the session is told here, or it would stay on a dead connection.
   */
  attach(sessionId: string, meta: { tenantId: string; machineId: string | null }, conn: string | null): void {
    const route = this.routeOf(sessionId, meta);
    if (!conn) return;
    const agent = this.agents.get(conn);
    if (agent) {
      route.agentConn = conn;
      agent.sessions.add(sessionId);
      return;
    }
    route.agentConn = null;
    this.tell(`session/${sessionId}`, { type: "agent.detached", conn, resumable: true });
  }

  toAgent(conn: string | null, message: ServerToAgent): void {
    if (!conn) return;
    this.agents.get(conn)?.link.send(encode(message as never));
  }

  /** A frame from an agent: data to its channel's viewers, control to the actor or viewers. */
  fromAgent(conn: string, frame: Uint8Array): boolean {
    if (isDataFrame(frame)) {
      const ch = this.channels.get(channelOf(frame));
      if (!ch) return true; // closed a moment ago: late bytes are dropped
      const route = this.sessions.get(ch.sessionId);
      if (!route || route.agentConn !== conn) return true;
      this.stats.framesRelayed++;
      if (ch.type === "download") {
        const v = route.viewers.get(ch.viewerId);
        if (v) this.deliver(route, v, frame);
        return true;
      }
      // Output before ch.opened: the agent lost its connection as it confirmed, and resumed.
      if (ch.record) this.startRecording(ch);
      for (const v of route.viewers.values()) this.deliver(route, v, frame);
      // Last: the recorder keeps the frame's buffer as it is (no copy) and later hands it to
      // its compressor thread, so nothing may use the frame after this.
      if (ch.recording && this.recorder && this.recorder.output(ch.recording, frame.subarray(5), true) === false) this.pauseForRecorder(conn, ch.recording);
      return true;
    }
    const msg = decode(AgentToServer, frame);
    if (!msg) return false;
    switch (msg.t) {
      case "consent":
        if (this.agents.get(conn)?.sessions.has(msg.session)) this.tell(`session/${msg.session}`, { type: "consent.answer", conn, granted: msg.granted });
        return true;
      case "session.resumed": {
        // Channels the agent no longer holds (it restarted, or its own grace ran out first) are
        // over: closed as if it had said so. It sends the closes it kept meanwhile before this.
        const route = this.sessions.get(msg.session);
        if (route?.agentConn !== conn) return true;
        const alive = new Set(msg.channels);
        for (const ch of [...this.channels.values()]) {
          // A channel opened on this connection was asked for after the resume: not in its list yet.
          if (ch.sessionId !== route.id || ch.conn === conn || alive.has(ch.channel)) continue;
          this.closeChannel(route, ch, { channel: ch.channel, reason: "agent_lost" });
        }
        return true;
      }
      case "chat": {
        const route = this.sessions.get(msg.session);
        if (route?.agentConn === conn) this.postChat(route, { member: `person:${route.id}`, name: "the person at the machine" }, msg.text);
        return true;
      }
      default: {
        const ch = this.channels.get(msg.channel);
        const route = ch && this.sessions.get(ch.sessionId);
        if (!ch || !route || route.agentConn !== conn) return true;
        if (msg.t === "ch.opened") {
          ch.opened = true;
          if (ch.record) this.startRecording(ch);
          this.broadcast(route.id, { t: "ch.opened", req: ch.req, channel: ch.channel, type: ch.type, ...(msg.size !== undefined ? { size: msg.size } : {}) }, ch.type === "term" || ch.type === "cmd" ? null : ch.viewerId);
        } else if (msg.t === "files.listing") {
          ch.opened = true;
          this.unicast(route, ch.viewerId, { t: "files.listing", req: ch.req, channel: ch.channel, path: msg.path, entries: msg.entries });
        } else if (msg.t === "ch.ack") {
          ch.acked = msg.bytes;
          this.unicast(route, ch.viewerId, { t: "ch.ack", channel: ch.channel, bytes: msg.bytes });
        } else if (msg.t === "ch.closed") {
          const { t: _t, ...end } = msg;
          this.closeChannel(route, ch, end);
        }
        return true;
      }
    }
  }

  // ---- viewers ------------------------------------------------------------------------------

  /** `meta.endUser`: the session's end user, if it is an end-user session (see SessionRoute). */
  addViewer(meta: { tenantId: string; machineId: string | null; endUser?: string | null }, link: ViewerLink): void {
    const route = this.routeOf(link.sessionId, meta);
    if (meta.endUser) route.endUser = meta.endUser;
    const t = this.now();
    route.viewers.set(link.viewerId, {
      link,
      frames: new TokenBucket(INPUT_LIMITS.framesPerSecond, INPUT_LIMITS.frameBurst, t),
      bytes: new TokenBucket(INPUT_LIMITS.bytesPerSecond, INPUT_LIMITS.byteBurst, t),
      control: new TokenBucket(INPUT_LIMITS.controlPerSecond, INPUT_LIMITS.controlBurst, t),
      refusedInARow: 0,
      lastThrottleNotice: -Infinity,
    });
  }

  removeViewer(sessionId: string, viewerId: string): void {
    const route = this.sessions.get(sessionId);
    if (!route?.viewers.delete(viewerId)) return;
    this.tell(`session/${sessionId}`, { type: "viewer.left", viewer_id: viewerId });
    // A route with nothing in it goes (a viewer refused by an ended session left one behind);
    // the next viewer or agent makes it again.
    if (route.viewers.size === 0 && !route.agentConn && ![...this.channels.values()].some((ch) => ch.sessionId === sessionId)) this.sessions.delete(sessionId);
  }

  /**
   * Closes every viewer socket of a user in a tenant (disabled, another role, a password reset):
   * a viewer token is checked only when its socket connects, so without this such a socket
   * would stay. Returns how many were closed; each leaves through its socket's close.
   */
  closeViewersOf(tenantId: string, userId: string, code: number, reason: string): number {
    let n = 0;
    for (const route of this.sessions.values()) {
      if (route.tenantId !== tenantId) continue;
      for (const v of route.viewers.values()) {
        if (v.link.userId !== userId) continue;
        v.link.close(code, reason);
        n++;
      }
    }
    return n;
  }

  /** A frame from a viewer. Returns false for a frame that is not a protocol frame. */
  async fromViewer(link: ViewerLink, frame: Uint8Array): Promise<boolean> {
    const route = this.sessions.get(link.sessionId);
    const v = route?.viewers.get(link.viewerId);
    if (!route || !v) return true;
    if (frame.byteLength > MAX_VIEWER_FRAME) return false;
    if (isDataFrame(frame)) return this.viewerData(route, v, frame);
    const msg = decode(ViewerToServer, frame);
    if (!msg) return false;
    if (msg.t === "ch.ack") {
      // Download progress from the receiving viewer lets the agent send on.
      const ch = this.channels.get(msg.channel);
      if (ch?.sessionId === route.id && ch.viewerId === link.viewerId && ch.type === "download") this.toAgent(route.agentConn, { t: "ch.ack", channel: ch.channel, bytes: msg.bytes });
      return true;
    }
    // Each of these is an actor ask, a database write, a recording mark or an answer: throttled too.
    const t = this.now();
    if (!v.control.take(1, t)) return this.refuseInput(route, v, t);
    v.refusedInARow = 0;
    if (link.access !== "control") {
      this.unicast(route, link.viewerId, { t: "error", req: "req" in msg ? msg.req : null, code: "VIEW_ONLY", message: "this viewer may watch but not act" });
      return true;
    }
    switch (msg.t) {
      case "term.open":
        return this.open(route, link, msg.req, "term", { cols: msg.cols, rows: msg.rows });
      case "files.list":
        return this.open(route, link, msg.req, "list", { path: msg.path });
      case "files.download":
        return this.open(route, link, msg.req, "download", { path: msg.path });
      case "files.upload":
        if (msg.size > this.options.maxUploadBytes) {
          this.unicast(route, link.viewerId, { t: "error", req: msg.req, code: "UPLOAD_TOO_LARGE", message: `uploads are limited to ${this.options.maxUploadBytes} bytes` });
          return true;
        }
        return this.open(route, link, msg.req, "upload", { path: msg.path, size: msg.size });
      case "cmd.run":
        return this.open(route, link, msg.req, "cmd", { argv: msg.argv, ...(msg.cwd ? { cwd: msg.cwd } : {}) });
      case "term.resize": {
        const ch = this.channels.get(msg.channel);
        if (ch?.sessionId !== route.id || ch.type !== "term") return true;
        if (ch.recording && this.recorder) this.recorder.resize(ch.recording, msg.cols, msg.rows);
        else if (ch.record) ch.record.resized = [msg.cols, msg.rows];
        this.toAgent(route.agentConn, { t: "ch.resize", channel: ch.channel, cols: msg.cols, rows: msg.rows });
        return true;
      }
      case "ch.close":
      case "ch.eof": {
        const ch = this.channels.get(msg.channel);
        if (ch?.sessionId !== route.id) return true;
        if (msg.t === "ch.eof" && (ch.type !== "upload" || ch.viewerId !== link.viewerId)) return true;
        this.toAgent(route.agentConn, { t: msg.t, channel: ch.channel });
        return true;
      }
      case "chat.send":
        this.postChat(route, { member: link.userId, name: link.name }, msg.text, link.viewerId);
        return true;
      case "session.end":
        await this.system.ask(`session/${route.id}`, { type: "session.end", by: link.endUser ? "end_user" : "technician", user_id: link.userId }).catch(() => {});
        return true;
    }
  }

  /** Called by the session actor's effect once a channel is durable: route it, ask the agent. */
  openRoute(r: { sessionId: string; tenantId: string; machineId: string | null; conn: string | null; viewerId: string; req: string; open: Extract<ServerToAgent, { t: "ch.open" }> }): void {
    const route = this.routeOf(r.sessionId, { tenantId: r.tenantId, machineId: r.machineId });
    const { channel, type } = r.open;
    // Recorded from when the agent confirms the terminal (startRecording), timed from now.
    const record = type === "term" && this.recording && this.recorder
      ? { tenantId: r.tenantId, machineId: r.machineId, at: Date.now(), cols: r.open.cols ?? 80, rows: r.open.rows ?? 24, resized: null }
      : null;
    this.channels.set(channel, { channel, sessionId: r.sessionId, type, viewerId: r.viewerId, req: r.req, opened: false, recording: null, record, conn: route.agentConn, received: 0, acked: 0 });
    if (!route.agentConn || !this.agents.has(route.agentConn)) {
      this.dropChannel(channel);
      this.tell(`session/${r.sessionId}`, { type: "channel.closed", channel, reason: "agent_lost" });
      this.unicast(route, r.viewerId, { t: "ch.closed", channel, req: r.req, reason: "agent_lost" });
      return;
    }
    this.toAgent(route.agentConn, r.open);
  }

  /** The session ended: the agent told, viewers closed with the reason, channels dropped. */
  endSession(sessionId: string, conn: string | null, reason: string): void {
    if (conn) this.toAgent(conn, { t: "session.stop", session: sessionId, reason: reason as never });
    const route = this.sessions.get(sessionId);
    if (!route) return;
    for (const ch of [...this.channels.values()]) if (ch.sessionId === sessionId) this.dropChannel(ch.channel);
    for (const v of route.viewers.values()) {
      v.link.send(encode({ t: "session.state", state: "ended", reason } as never));
      v.link.close(VIEWER_CLOSE.SESSION_ENDED, `session ended: ${reason}`);
    }
    route.viewers.clear();
    if (route.agentConn) this.agents.get(route.agentConn)?.sessions.delete(sessionId);
    this.sessions.delete(sessionId);
  }

  broadcast(sessionId: string, message: ServerToViewer, onlyViewer: string | null = null): void {
    const route = this.sessions.get(sessionId);
    if (!route) return;
    const frame = encode(message as never);
    for (const v of route.viewers.values()) if (onlyViewer === null || v.link.viewerId === onlyViewer) this.deliver(route, v, frame);
  }

  /**
   * Session chat goes through the session's room (src/rooms): posted there, stored, and back
   * here by `deliverChat` once committed, so the room's other subscribers see the same thing.
   */
  chat: (sessionId: string, tenantId: string, from: { member: string; name: string }, text: string) => Promise<unknown> = async () => null;

  /** A message of a session's room: to every viewer, and to the person at the machine unless it is theirs. */
  deliverChat(sessionId: string, m: ChatRow): void {
    const route = this.sessions.get(sessionId);
    if (!route) return;
    this.broadcast(sessionId, chatToViewer(route, m));
    if (m.sender === `person:${sessionId}`) return;
    // A room message may be longer than one agent frame carries (the agent refuses a frame
    // that breaks its schema, and drops the connection): it goes in pieces, in order.
    const from = cutAt(m.sender_name, MAX_CHAT_FROM);
    let rest = m.body;
    do {
      const text = cutAt(rest, MAX_CHAT_TEXT);
      this.toAgent(route.agentConn, { t: "chat", session: sessionId, from, text });
      rest = rest.slice(text.length);
    } while (rest.length > 0);
  }

  /** The chat so far, to one viewer who has just joined (the page drops what it already has, by id). */
  chatHistory(sessionId: string, viewerId: string, messages: ChatRow[]): void {
    const route = this.sessions.get(sessionId);
    if (route) for (const m of messages) this.unicast(route, viewerId, chatToViewer(route, m));
  }

  /**
   * A viewer's chat refused by the room (its sender removed from the session's room: checked
   * when the message is written) is answered `error NOT_A_MEMBER` on that viewer's socket.
   */
  private postChat(route: SessionRoute, from: { member: string; name: string }, text: string, viewerId: string | null = null): void {
    this.chat(route.id, route.tenantId, from, text).catch((err: Error & { status?: unknown; code?: unknown }) => {
      if (viewerId !== null && err.status === 403 && err.code === "NOT_A_MEMBER") {
        this.unicast(route, viewerId, { t: "error", req: null, code: "NOT_A_MEMBER", message: "not a member of the session's room: chat refused" });
        return;
      }
      this.log.warn({ session_id: route.id, err: err.message }, "session chat not stored");
    });
  }

  viewerCount(sessionId: string): number {
    return this.sessions.get(sessionId)?.viewers.size ?? 0;
  }

  /** Graceful stop: every viewer told the server is going. */
  stop(): void {
    for (const route of this.sessions.values()) for (const v of route.viewers.values()) v.link.close(VIEWER_CLOSE.SERVER_STOPPING, "server stopping");
  }

  // ---- internals ----------------------------------------------------------------------------

  private routeOf(sessionId: string, meta: { tenantId: string; machineId: string | null }): SessionRoute {
    let route = this.sessions.get(sessionId);
    if (!route) {
      route = { id: sessionId, tenantId: meta.tenantId, machineId: meta.machineId, agentConn: null, viewers: new Map(), endUser: null };
      this.sessions.set(sessionId, route);
    }
    return route;
  }

  private async open(route: SessionRoute, link: ViewerLink, req: string, type: ChannelType, args: Record<string, unknown>): Promise<boolean> {
    let channel = newChannelId();
    while (this.channels.has(channel)) channel = newChannelId();
    const res = await this.system.ask<{ ok: boolean; code?: string }>(`session/${route.id}`, { type: "channel.open", channel, channel_type: type, viewer_id: link.viewerId, req, ...args })
      .catch((e: Error) => ({ reply: { ok: false, code: "UNAVAILABLE", message: e.message } }));
    const reply = res.reply;
    if (!reply?.ok) this.unicast(route, link.viewerId, { t: "error", req, code: reply?.code ?? "CHANNEL_REFUSED", message: "the session cannot open that channel now" });
    return true;
  }

  private viewerData(route: SessionRoute, v: ViewerState, frame: Uint8Array): boolean {
    const ch = this.channels.get(channelOf(frame));
    if (!ch || ch.sessionId !== route.id) return true;
    if (v.link.access !== "control") {
      this.unicast(route, v.link.viewerId, { t: "error", req: null, code: "VIEW_ONLY", message: "this viewer may watch but not type" });
      return true;
    }
    if (ch.type === "upload") {
      if (ch.viewerId !== v.link.viewerId) return true;
      ch.received += frame.byteLength - 5;
      // The uploader keeps to the window; one that does not is cut off from the channel.
      if (ch.received - ch.acked > TRANSFER_WINDOW + FILE_CHUNK) {
        this.toAgent(route.agentConn, { t: "ch.close", channel: ch.channel });
        this.unicast(route, v.link.viewerId, { t: "error", req: ch.req, code: "WINDOW_EXCEEDED", message: "sent beyond the transfer window" });
        return true;
      }
    } else if (ch.type !== "term") {
      return true;
    } else {
      const t = this.now();
      if (!v.frames.take(1, t) || !v.bytes.take(frame.byteLength, t)) return this.refuseInput(route, v, t);
      v.refusedInARow = 0;
    }
    const agent = route.agentConn ? this.agents.get(route.agentConn) : undefined;
    agent?.link.send(frame);
    return true;
  }

  /** Input over a viewer's limits is dropped, with a notice at most once a second; too much in a row cuts the viewer off. */
  private refuseInput(route: SessionRoute, v: ViewerState, t: number): true {
    this.stats.inputThrottled++;
    if (++v.refusedInARow >= INPUT_LIMITS.maxRefusedInARow) v.link.close(VIEWER_CLOSE.THROTTLED, "input rate limit");
    else if (t - v.lastThrottleNotice > 1000) {
      v.lastThrottleNotice = t;
      this.unicast(route, v.link.viewerId, { t: "error", req: null, code: "THROTTLED", message: "input dropped: too fast" });
    }
    return true;
  }

  private deliver(route: SessionRoute, v: ViewerState, frame: Uint8Array): void {
    if (v.link.buffered() > this.options.slowViewerBytes) {
      this.stats.slowViewersDropped++;
      route.viewers.delete(v.link.viewerId);
      v.link.close(VIEWER_CLOSE.TOO_SLOW, "too far behind the output; reconnect to catch up");
      this.tell(`session/${route.id}`, { type: "viewer.left", viewer_id: v.link.viewerId });
      return;
    }
    v.link.send(frame);
  }

  /**
   * A terminal's recording starts when the agent has the terminal (its ch.opened, or its first
   * output if that ch.opened was lost with a connection), not when it is asked for: a channel
   * with no agent, or whose PTY failed to start (ch.closed at once), leaves no empty recording.
   * It is timed from the channel's opening, as before; frames are handled in order, so output
   * that follows ch.opened finds the recording started.
   */
  private startRecording(ch: ChannelRoute): void {
    const p = ch.record;
    ch.record = null;
    if (!p || !this.recorder) return;
    ch.recording = this.recorder.start({ tenantId: p.tenantId, sessionId: ch.sessionId, machineId: p.machineId, channel: ch.channel, cols: p.cols, rows: p.rows, at: p.at });
    if (p.resized) this.recorder.resize(ch.recording, p.resized[0], p.resized[1]);
  }

  /**
   * The recorder is behind on this agent's terminal: stop reading the agent's socket until it
   * has caught up (or MAX_RECORDER_PAUSE_MS passed). Output already read is still relayed and
   * recorded; the agent, and with it the PTY (src/agent/session/terminal.ts), feel TCP pushing back.
   */
  private pauseForRecorder(conn: string, recording: string): void {
    const agent = this.agents.get(conn);
    if (!agent?.link.pause || !agent.link.resume) return;
    if (agent.pausedFor) return void agent.pausedFor.add(recording);
    agent.pausedFor = new Set([recording]);
    this.stats.recorderPauses++;
    agent.link.pause();
    agent.pauseTimer = setTimeout(() => {
      this.stats.recorderPauseTimeouts++;
      this.resumeAgent(agent);
    }, MAX_RECORDER_PAUSE_MS);
  }

  private resumeCaughtUp(): void {
    for (const agent of this.agents.values()) {
      if (!agent.pausedFor) continue;
      for (const id of agent.pausedFor) if (!this.recorder?.behind?.(id)) agent.pausedFor.delete(id);
      if (agent.pausedFor.size === 0) this.resumeAgent(agent);
    }
  }

  private resumeAgent(agent: AgentState): void {
    if (!agent.pausedFor) return;
    agent.pausedFor = null;
    if (agent.pauseTimer) clearTimeout(agent.pauseTimer);
    agent.pauseTimer = null;
    try {
      agent.link.resume?.();
    } catch {}
  }

  private unicast(route: SessionRoute, viewerId: string, message: ServerToViewer): void {
    const v = route.viewers.get(viewerId);
    if (v) this.deliver(route, v, encode(message as never));
  }

  /** The agent's channel is over: its viewers told, its route and recording ended, the session told. */
  private closeChannel(route: SessionRoute, ch: ChannelRoute, end: Omit<Extract<AgentToServer, { t: "ch.closed" }>, "t">): void {
    // One that never opened was never named to the viewers: `req` tells its requester it failed.
    const req = !ch.opened && ch.req !== null ? { req: ch.req } : {};
    this.broadcast(route.id, { t: "ch.closed", ...end, ...req }, ch.type === "term" || ch.type === "cmd" ? null : ch.viewerId);
    this.dropChannel(ch.channel);
    this.tell(`session/${route.id}`, { type: "channel.closed", ...end });
  }

  private dropChannel(channel: number): void {
    const ch = this.channels.get(channel);
    if (!ch) return;
    this.channels.delete(channel);
    if (ch.recording && this.recorder) this.recorder.end(ch.recording);
  }

  private tell(address: string, event: { type: string; [k: string]: unknown }): void {
    try {
      this.system.send(address, event);
    } catch (e) {
      this.log.warn({ address, event: event.type, err: (e as Error).message }, "relay could not reach the session actor");
    }
  }
}

/** A message of a session's room, as the rows and the room hub have it. */
type ChatRow = Pick<RoomMessage, "id" | "sender" | "sender_name" | "body" | "ts">;

/** The first `max` UTF-16 units of `s`, one fewer rather than half a surrogate pair. */
function cutAt(s: string, max: number): string {
  if (s.length <= max) return s;
  const high = s.charCodeAt(max - 1);
  return s.slice(0, high >= 0xd800 && high <= 0xdbff ? max - 1 : max);
}

/** Chat as viewers see it: the person at the machine (attended) and the session's end user are `end_user`. */
const chatToViewer = (route: SessionRoute, m: ChatRow): ServerToViewer => {
  const endUser = m.sender === `person:${route.id}` || (route.endUser !== null && m.sender === route.endUser);
  return { t: "chat", id: m.id, from: m.sender_name, role: endUser ? "end_user" : "technician", text: m.body, at: m.ts };
};
