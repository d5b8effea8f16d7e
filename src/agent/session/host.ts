import { channelOf, payloadOf } from "../../protocol/frames.ts";
import type { AgentToServer, ChannelType, SessionKind, ServerToAgent } from "../../protocol/relay.ts";
import type { Logger } from "../log.ts";
import { defaultExecEnv, errorEnd, type Channel, type ChannelContext, type End, type ExecEnv, type StopReason } from "./channel.ts";
import { CommandChannel } from "./command.ts";
import { DownloadChannel } from "./download.ts";
import { ListingChannel } from "./listing.ts";
import { TerminalChannel } from "./terminal.ts";
import { UploadChannel } from "./upload.ts";
import type { Outbound, Send } from "./wire.ts";

export const MAX_SESSIONS = 8;
export const MAX_CHANNELS_PER_SESSION = 16;
export const DEFAULT_GRACE_MS = 60_000;

export interface ConsentRequest {
  session: string;
  kind: SessionKind;
  technician: string;
}
/** Asks whoever decides (the person at the machine, or a flag). Aborted if the session ends first. */
export type ConsentPolicy = (req: ConsentRequest, signal: AbortSignal) => Promise<boolean>;

/** What the person at the machine is told: printed in attended mode, logged in managed mode. */
export interface Presenter {
  /** The session is on: consent given, or not needed. */
  started(req: ConsentRequest): void;
  notice(session: string, text: string): void;
  chat(session: string, from: string, text: string): void;
  /** session.stop (reason from the server), or the grace period ran out ("agent_lost"). */
  ended(session: string, reason: string): void;
}

export interface SessionHostOptions {
  consent: ConsentPolicy;
  presenter: Presenter;
  log: Logger;
  /** How long sessions outlive a lost connection, waiting for the server's resume. */
  graceMs?: number;
  exec?: ExecEnv;
  maxSessions?: number;
  maxChannels?: number;
  /** Transfer window (tests make it small); TRANSFER_WINDOW by default. */
  window?: number;
}

interface Hosted {
  id: string;
  kind: SessionKind;
  technician: string;
  /** "denied": refused while disconnected, held only until the refusal is delivered. */
  state: "consent" | "active" | "denied";
  channels: Set<number>;
  /** consent and ch.closed produced while disconnected: sent when the server resumes. */
  undelivered: AgentToServer[];
  consentAbort: AbortController | null;
  grace: ReturnType<typeof setTimeout> | null;
}

interface Open {
  id: number;
  session: Hosted;
  type: ChannelType;
  channel: Channel | null;
  stopping: boolean;
  ended: boolean;
  since: number;
}

/**
 * The agent's side of sessions (S1, S4, S7), independent of the socket: it is given ServerToAgent
 * messages and data frames, and a `send` while connected. One host lives as long as the agent
 * process, so sessions and their terminals outlive a dropped connection for the grace period.
 * Logs name channels by type and path or argv[0]; never file contents, terminal bytes or chat.
 */
export class SessionHost {
  private send: Send | null = null;
  private backlog: () => number = () => 0;
  private readonly sessions = new Map<string, Hosted>();
  private readonly channels = new Map<number, Open>();
  private readonly exec: ExecEnv;
  private readonly graceMs: number;
  private readonly maxSessions: number;
  private readonly maxChannels: number;
  private readonly log: Logger;
  private idle: Array<() => void> = [];

  constructor(private readonly o: SessionHostOptions) {
    this.exec = o.exec ?? defaultExecEnv();
    this.graceMs = o.graceMs ?? DEFAULT_GRACE_MS;
    this.maxSessions = o.maxSessions ?? MAX_SESSIONS;
    this.maxChannels = o.maxChannels ?? MAX_CHANNELS_PER_SESSION;
    this.log = o.log;
  }

  /**
   * Connected (after the handshake): from now on messages and frames go to `send`; `backlog`
   * tells how many bytes wait in the socket (terminals and commands pause above a mark).
   */
  attach(send: Send, backlog: () => number = () => 0): void {
    this.send = send;
    this.backlog = backlog;
  }

  /**
   * The connection is gone. Transfers end (they cannot have a gap); terminals and commands keep
   * running, their output dropped, until the server resumes the session or the grace runs out.
   */
  detach(): void {
    if (!this.send) return;
    this.send = null;
    for (const s of this.sessions.values()) {
      for (const id of s.channels) {
        const open = this.channels.get(id);
        if (open?.channel && !open.channel.survivesDisconnect) this.stopChannel(id, "agent_lost");
      }
      if (s.grace) clearTimeout(s.grace);
      s.grace = setTimeout(() => this.expire(s), this.graceMs);
      this.log.info({ event: "session.detached", session: s.id, channels: s.channels.size, grace_ms: this.graceMs }, "connection lost; keeping the session for the grace period");
    }
  }

  get connected(): boolean {
    return this.send !== null;
  }

  /** Session ids held (tests, status). */
  sessionIds(): string[] {
    return [...this.sessions.keys()];
  }

  channelIds(session?: string): number[] {
    return [...this.channels.values()].filter((c) => !session || c.session.id === session).map((c) => c.id);
  }

  handle(m: ServerToAgent): void {
    switch (m.t) {
      case "session.start":
        void this.start(m);
        return;
      case "session.stop": {
        const s = this.sessions.get(m.session);
        this.log.info({ event: "session.stop", session: m.session, reason: m.reason, known: !!s }, "session ended by the server");
        if (s) this.forget(s, "session_ended");
        this.o.presenter.ended(m.session, m.reason);
        return;
      }
      case "notice":
        if (this.sessions.has(m.session)) this.o.presenter.notice(m.session, m.text);
        return;
      case "chat":
        if (this.sessions.has(m.session)) this.o.presenter.chat(m.session, m.from, m.text);
        return;
      case "ch.open":
        this.open(m);
        return;
      case "ch.resize": {
        const open = this.channels.get(m.channel);
        if (open?.channel && !open.stopping) open.channel.resize(m.cols, m.rows);
        return;
      }
      case "ch.close":
        this.stopChannel(m.channel, undefined);
        return;
      case "ch.eof": {
        const open = this.channels.get(m.channel);
        if (open?.channel && !open.stopping) open.channel.eof();
        return;
      }
      case "ch.ack": {
        const open = this.channels.get(m.channel);
        if (open?.channel && !open.stopping) open.channel.ack(m.bytes);
        return;
      }
    }
  }

  /** A data frame from the server: input for the channel it names (unknown channels: dropped). */
  data(frame: Uint8Array): void {
    const open = this.channels.get(channelOf(frame));
    if (open?.channel && !open.stopping) open.channel.input(payloadOf(frame));
  }

  /** A chat line typed by the person at the machine (attended mode). False if it cannot go now. */
  chat(session: string, text: string): boolean {
    const s = this.sessions.get(session);
    const line = text.slice(0, 4096);
    if (!s || s.state !== "active" || !this.send || line.trim() === "") return false;
    this.send({ t: "chat", session, text: line });
    return true;
  }

  /** Ends every session and channel (agent stopping); resolves when the channels are gone, 5 s at most. */
  async shutdown(): Promise<void> {
    for (const s of [...this.sessions.values()]) this.forget(s, "session_ended");
    if (this.channels.size === 0) return;
    await Promise.race([new Promise<void>((r) => this.idle.push(r)), Bun.sleep(5_000)]);
  }

  // ---- sessions -----------------------------------------------------------------------------

  private async start(m: Extract<ServerToAgent, { t: "session.start" }>): Promise<void> {
    const known = this.sessions.get(m.session);
    if (known) {
      if (known.grace) clearTimeout(known.grace);
      known.grace = null;
      if (m.resume) {
        const alive = [...known.channels].filter((id) => !this.channels.get(id)?.stopping);
        this.log.info({ event: "session.resumed", session: m.session, channels: alive.length, closed_meanwhile: known.undelivered.filter((u) => u.t === "ch.closed").length }, "session resumed");
        // What closed meanwhile first: the server takes a channel missing from `session.resumed`
        // as lost, and would record it so before hearing how it really ended.
        for (const u of known.undelivered.splice(0)) this.out(u);
        this.out({ t: "session.resumed", session: m.session, channels: alive });
        if (known.state === "denied") this.sessions.delete(known.id); // its refusal is delivered
        return;
      }
      // Started over by the server: nothing of the old one stays.
      this.forget(known, "session_ended");
    }
    const req: ConsentRequest = { session: m.session, kind: m.kind, technician: m.technician };
    if (this.sessions.size >= this.maxSessions) {
      this.log.warn({ event: "session.refused", session: m.session, sessions: this.sessions.size }, `at most ${this.maxSessions} sessions at once; refusing`);
      this.out({ t: "consent", session: m.session, granted: false });
      return;
    }
    const s: Hosted = { ...req, id: m.session, state: "consent", channels: new Set(), undelivered: [], consentAbort: null, grace: null };
    this.sessions.set(s.id, s);
    this.log.info({ event: "session.start", session: s.id, kind: s.kind, technician: s.technician, consent: m.consent, resume: m.resume }, "session started");
    // Resuming a session this agent does not hold (it restarted, or the grace ran out): nothing survived.
    if (m.resume) this.out({ t: "session.resumed", session: s.id, channels: [] });
    if (m.consent === "not_required") {
      s.state = "active";
      this.o.presenter.started(req);
      return;
    }
    const abort = new AbortController();
    s.consentAbort = abort;
    let granted = false;
    try {
      granted = await this.o.consent(req, abort.signal);
    } catch (e) {
      this.log.warn({ event: "session.consent_failed", session: s.id, err: (e as Error).message }, "could not ask for consent; declining");
    }
    if (abort.signal.aborted || this.sessions.get(s.id) !== s) return; // ended while asking
    s.consentAbort = null;
    this.log.info({ event: "session.consent", session: s.id, granted }, granted ? "consent granted" : "consent denied");
    this.deliver(s, { t: "consent", session: s.id, granted });
    if (granted) {
      s.state = "active";
      this.o.presenter.started(req);
    } else if (this.send) {
      this.sessions.delete(s.id); // the server ends it (consent_denied); no channel can open
    } else {
      // Disconnected: the refusal waits in `undelivered` for the resume, so the session is
      // held until then (no channel opens: it is not active); else the person is asked again.
      s.state = "denied";
    }
  }

  private expire(s: Hosted): void {
    if (this.sessions.get(s.id) !== s) return;
    this.log.warn({ event: "session.expired", session: s.id, channels: s.channels.size, grace_ms: this.graceMs }, "not resumed within the grace period; closing it");
    this.forget(s, "agent_lost");
    this.o.presenter.ended(s.id, "agent_lost");
  }

  private forget(s: Hosted, reason: "session_ended" | "agent_lost"): void {
    if (this.sessions.get(s.id) === s) this.sessions.delete(s.id);
    if (s.grace) clearTimeout(s.grace);
    s.grace = null;
    s.consentAbort?.abort();
    s.consentAbort = null;
    for (const id of [...s.channels]) this.stopChannel(id, reason);
  }

  // ---- channels -----------------------------------------------------------------------------

  private open(m: Extract<ServerToAgent, { t: "ch.open" }>): void {
    const refuse = (code: string, message: string) => {
      this.log.warn({ event: "channel.refused", session: m.session, channel: m.channel, type: m.type, code }, message);
      this.out({ t: "ch.closed", channel: m.channel, reason: "error", error: { code, message } });
    };
    if (this.channels.has(m.channel)) {
      this.log.warn({ event: "channel.duplicate", session: m.session, channel: m.channel, type: m.type }, "ch.open for a channel that is open; ignored");
      return;
    }
    const s = this.sessions.get(m.session);
    if (!s) return refuse("NO_SESSION", "no such session on this agent");
    if (s.state !== "active") return refuse("NO_CONSENT", "the session has no consent (yet)");
    if (s.channels.size >= this.maxChannels) return refuse("LIMIT", `at most ${this.maxChannels} channels per session`);
    if ((m.type === "list" || m.type === "download" || m.type === "upload") && !m.path) return refuse("BAD_REQUEST", `${m.type} needs a path`);
    if (m.type === "upload" && m.size === undefined) return refuse("BAD_REQUEST", "upload needs a size");
    if (m.type === "cmd" && !m.argv?.length) return refuse("BAD_REQUEST", "cmd needs argv");

    const open: Open = { id: m.channel, session: s, type: m.type, channel: null, stopping: false, ended: false, since: Date.now() };
    this.channels.set(open.id, open);
    s.channels.add(open.id);
    this.log.info({ event: "channel.open", session: s.id, channel: open.id, type: m.type, ...(m.path ? { path: m.path } : {}), ...(m.argv ? { argv0: m.argv[0] } : {}) }, "channel opened");

    const ctx: ChannelContext = {
      id: open.id,
      exec: this.exec,
      log: this.log,
      frame: (frame) => {
        if (!open.ended) this.send?.(frame);
      },
      send: (message) => {
        if (!open.ended) this.send?.(message);
      },
      backlog: () => (this.send ? this.backlog() : 0),
      end: (end) => this.channelEnded(open, end),
    };
    try {
      open.channel = this.create(ctx, m);
    } catch (e) {
      ctx.end(errorEnd(e));
    }
  }

  private create(ctx: ChannelContext, m: Extract<ServerToAgent, { t: "ch.open" }>): Channel {
    switch (m.type) {
      case "term":
        return new TerminalChannel(ctx, m.cols ?? 80, m.rows ?? 24);
      case "list":
        return new ListingChannel(ctx, m.path!);
      case "download":
        return new DownloadChannel(ctx, m.path!, this.o.window);
      case "upload":
        return new UploadChannel(ctx, m.path!, m.size!, this.o.window);
      case "cmd":
        return new CommandChannel(ctx, m.argv!, m.cwd);
    }
  }

  private stopChannel(id: number, reason: StopReason): void {
    const open = this.channels.get(id);
    if (!open || open.stopping || open.ended) return;
    open.stopping = true;
    open.channel?.stop(reason);
  }

  private channelEnded(open: Open, end: End): void {
    if (open.ended) return;
    open.ended = true;
    this.channels.delete(open.id);
    open.session.channels.delete(open.id);
    this.log.info(
      {
        event: "channel.closed",
        session: open.session.id,
        channel: open.id,
        type: open.type,
        reason: end.reason,
        ...(end.exit_code !== undefined ? { exit_code: end.exit_code } : {}),
        ...(end.bytes !== undefined ? { bytes: end.bytes } : {}),
        ...(end.error ? { code: end.error.code } : {}),
        ms: Date.now() - open.since,
      },
      "channel closed",
    );
    this.deliver(open.session, { t: "ch.closed", channel: open.id, ...end });
    if (this.channels.size === 0) for (const r of this.idle.splice(0)) r();
  }

  /** Sent now, or kept for the resume if disconnected (while the session is still held). */
  private deliver(s: Hosted, m: AgentToServer): void {
    if (this.send) this.send(m);
    else if (this.sessions.get(s.id) === s) s.undelivered.push(m);
  }

  private out(m: Outbound): void {
    this.send?.(m);
  }
}
