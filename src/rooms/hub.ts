import type { Logger } from "../log.ts";
import { ROOM_CLOSE, type RoomFrame, type RoomMessage } from "../protocol/rooms.ts";
import type { Queryable } from "../store/store.ts";
import { messagesAfter } from "./rooms.ts";

/**
 * One subscriber of a room: a WebSocket, an SSE stream, or something in-process. `backlog` is
 * what its transport holds that the peer has not taken yet. History is paced by it (the hub
 * waits); live messages are not: past the limit the subscriber is closed with a reason and
 * resumes from its last id.
 */
export interface Subscriber {
  readonly member: string;
  /**
   * The login credential that opened the stream (a login session or an API token), checked only
   * at connect: revoking it, or disabling its user, ends the stream (`closeCredential`, `closeUser`).
   */
  readonly credential?: SubscriberCredential;
  send(frame: EncodedFrame): void;
  backlog(): number;
  close(code: number, reason: string): void;
  /** A WebSocket on Bun's server: once live, it may take the room's frames from a topic instead. */
  readonly topics?: TopicTransport;
}

export interface SubscriberCredential {
  readonly id: string;
  readonly kind: "session" | "api_token";
  readonly userId: string;
}

/**
 * Bun's native fan-out (uWS topics): `server.publish` writes a frame to every socket of a
 * topic in one call, each socket's frames coalesced into one write; a loop of `ws.send` costs a
 * JS→native call and a system call per socket and frame. uWS keeps per-socket order between
 * `publish` and `send` (a send first drains what the topic queued for that socket).
 */
export interface TopicTransport {
  /** The server that publishes; one per process in practice. */
  readonly publisher: { publish(topic: string, data: string): unknown };
  subscribe(topic: string): void;
  unsubscribe(topic: string): void;
}

/** A frame encoded once and shared by every subscriber it goes to. */
export class EncodedFrame {
  private jsonText?: string;
  private sseText?: string;
  constructor(readonly frame: RoomFrame) {}
  get json(): string {
    return (this.jsonText ??= JSON.stringify(this.frame));
  }
  get sse(): string {
    if (this.sseText !== undefined) return this.sseText;
    const f = this.frame;
    if (f.t === "message") return (this.sseText = `id: ${f.message.id}\nevent: message\ndata: ${JSON.stringify(f.message)}\n\n`);
    return (this.sseText = `event: ${f.t}\ndata: ${this.json}\n\n`);
  }
}

interface RoomState {
  /** Subscribers receiving live frames: `direct` ones and those on the room's topic. */
  live: Set<Subscriber>;
  direct: Set<Subscriber>;
  viaTopic: Set<Subscriber>;
  topic: string;
  publisher: TopicTransport["publisher"] | null;
  /** Bytes published to the topic since its subscribers' backlogs were last checked. */
  topicBytes: number;
  /** Bytes published to the topic in this turn of the event loop (reset by setImmediate). */
  tickBytes: number;
  /** Subscribers still reading history: live messages wait in their buffer. */
  catchingUp: Map<Subscriber, RoomMessage[]>;
  /** Rooms without persisted history: the last messages, for resuming a dropped stream. */
  recent: RoomMessage[];
  persist: boolean;
}

export interface HubOptions {
  /** Bytes a live subscriber may fall behind before it is dropped. */
  maxBacklogBytes: number;
  /** How long history waits for a subscriber that takes nothing before dropping it. */
  historyStallMs: number;
  /** Live messages a subscriber may have waiting while it reads history. */
  maxCatchUpBuffer: number;
  /** Messages kept in memory for resuming streams of rooms without persisted history. */
  recentKept: number;
  historyPage: number;
  /**
   * Bun's per-socket backpressure limit (server-wide; 16 MiB unless the server sets
   * `backpressureLimit`). Past it, uWS silently skips a socket's frames, so the topic path is
   * used only while a subscriber's worst case stays well under it (see `toTopic`).
   */
  socketLimitBytes: number;
  /** Use topics for WebSocket subscribers that offer them. */
  topics: boolean;
  /** Rooms without history and without subscribers whose recent messages stay in memory. */
  maxIdleRecentRooms: number;
}
const DEFAULTS: HubOptions = {
  maxBacklogBytes: 1024 * 1024, historyStallMs: 30_000, maxCatchUpBuffer: 10_000, recentKept: 1_000, historyPage: 500,
  socketLimitBytes: 16 * 1024 * 1024, topics: true, maxIdleRecentRooms: 1_000,
};
/** The largest frame: a 16 KiB body of control characters is 96 KiB of JSON; ciphertext and the rest fit too. */
const MAX_FRAME_BYTES = 128 * 1024;
let hubs = 0;

/**
 * The fan-out of every room (R2, R5): subscribers get history and then live messages, each
 * exactly once and in id order. A message is sent to all live subscribers as soon as the
 * message log has committed it; a subscriber whose transport cannot keep up is cut off, never
 * waited for. Session rooms' messages also go to `onMessage` (the session's viewers and agent).
 */
export class RoomHub {
  private readonly rooms = new Map<string, RoomState>();
  private readonly o: HubOptions;
  onMessage: (roomId: string, message: RoomMessage) => void = () => {};
  /**
   * Resolves once every message committed so far has been published (MessageLog.settled; wired
   * by the Rooms service). History can show rows a moment before they are published.
   */
  fence: (roomId: string) => Promise<void> = () => Promise.resolve();
  /** Frames delivered to live subscribers, subscribers dropped as too slow, frames published to a topic once for many. */
  stats = { delivered: 0, dropped: 0, published: 0 };

  private readonly id = ++hubs;
  /** Topic traffic between two checks of the subscribers' backlogs, and in one turn of the loop. */
  private readonly checkBytes: number;
  private readonly useTopics: boolean;
  private touched: RoomState[] = [];

  constructor(private readonly db: Queryable, private readonly log: Logger, opts: Partial<HubOptions> = {}) {
    this.o = { ...DEFAULTS, ...opts };
    this.checkBytes = Math.max(16 * 1024, Math.min(256 * 1024, Math.floor(this.o.maxBacklogBytes / 4)));
    // Worst case of a topic subscriber's queue (see toTopic): the limit, what a turn of the loop
    // may leave undrained at a check, what may be published until the next check, one frame.
    this.useTopics = this.o.topics && this.o.maxBacklogBytes + 2 * this.checkBytes + MAX_FRAME_BYTES <= this.o.socketLimitBytes / 2;
  }

  /** Called by the message log, in id order, after the message is durable (or, unpersisted, accepted). */
  publish(roomId: string, message: RoomMessage, persist: boolean): void {
    const room = persist ? this.rooms.get(roomId) : this.state(roomId, false);
    if (room) {
      if (!room.persist) {
        room.recent.push(message);
        if (room.recent.length > this.o.recentKept) room.recent.splice(0, room.recent.length - this.o.recentKept);
      }
      for (const [sub, buffer] of room.catchingUp) {
        buffer.push(message);
        if (buffer.length > this.o.maxCatchUpBuffer) this.drop(roomId, room, sub);
      }
      if (room.live.size > 0) this.fanOut(roomId, room, new EncodedFrame({ t: "message", message }));
    }
    try {
      this.onMessage(roomId, message);
    } catch (err) {
      this.log.error({ room_id: roomId, err: (err as Error).message }, "room message hook failed");
    }
  }

  /**
   * The room actor changed its members or key epoch (it checks membership for every subscribe
   * and post; the hub only has to end the streams of whoever is no longer a member).
   */
  membersChanged(roomId: string, members: string[], epoch: { epoch: number; keyed_epoch: number }): void {
    const room = this.rooms.get(roomId);
    if (!room) return;
    const keep = new Set(members);
    for (const sub of [...room.live, ...room.catchingUp.keys()]) {
      if (!keep.has(sub.member)) this.remove(roomId, room, sub, ROOM_CLOSE.NOT_A_MEMBER, "not_a_member");
    }
    if (room.live.size > 0) this.fanOut(roomId, room, new EncodedFrame({ t: "epoch", epoch: epoch.epoch, keyed_epoch: epoch.keyed_epoch }));
  }

  /**
   * History after `after` (exclusive; null: from the start), then live. Live messages that
   * arrive while history is read wait in the subscriber's buffer and are sent after it, minus
   * any the history already had (the log commits in id order, so history is a prefix).
   */
  async subscribe(roomId: string, sub: Subscriber, after: string | null, persist: boolean): Promise<void> {
    const room = this.state(roomId, persist);
    const buffer: RoomMessage[] = [];
    room.catchingUp.set(sub, buffer);
    let last = after;
    try {
      if (persist) {
        for (;;) {
          const page = await messagesAfter(this.db, roomId, last, this.o.historyPage);
          if (!room.catchingUp.has(sub)) return; // dropped or closed while reading
          for (const m of page) {
            if (!(await this.paced(room, sub))) return this.drop(roomId, room, sub);
            sub.send(new EncodedFrame({ t: "message", message: m }));
            last = m.id;
          }
          if (page.length < this.o.historyPage) break;
        }
      } else {
        for (const m of [...room.recent]) {
          if (last !== null && m.id <= last) continue;
          if (!(await this.paced(room, sub))) return this.drop(roomId, room, sub);
          sub.send(new EncodedFrame({ t: "message", message: m }));
          last = m.id;
        }
      }
      // A page may end with rows committed but not yet published; their publish must land in
      // this subscriber's buffer (and be skipped there), not reach it live a second time.
      if (persist) await this.fence(roomId);
    } catch (err) {
      room.catchingUp.delete(sub);
      throw err;
    }
    if (!room.catchingUp.has(sub)) return;
    // From here to `live.add` nothing awaits: no message can slip between the buffer and live.
    room.catchingUp.delete(sub);
    for (const m of buffer) {
      if (last !== null && m.id <= last) continue;
      sub.send(new EncodedFrame({ t: "message", message: m }));
      last = m.id;
    }
    sub.send(new EncodedFrame({ t: "live", after: last }));
    room.live.add(sub);
    // Everything up to here went to the socket directly; from here on the topic carries the
    // room's frames to it (a frame published before this line is not sent to it twice: uWS
    // picks a topic's sockets when a frame is published).
    const topics = this.useTopics ? sub.topics : undefined;
    if (topics && (room.publisher === null || room.publisher === topics.publisher)) {
      topics.subscribe(room.topic);
      room.publisher = topics.publisher;
      room.viaTopic.add(sub);
    } else {
      room.direct.add(sub);
    }
    if (sub.backlog() > this.o.maxBacklogBytes) this.drop(roomId, room, sub);
  }

  /** Ends one subscriber's stream with a reason (e.g. it turned out not to be a member). */
  end(roomId: string, sub: Subscriber, code: number, reason: string): void {
    const room = this.rooms.get(roomId);
    if (room && (room.live.has(sub) || room.catchingUp.has(sub))) this.remove(roomId, room, sub, code, reason);
  }

  /** The subscriber went away by itself (socket closed, stream cancelled). */
  unsubscribe(roomId: string, sub: Subscriber): void {
    const room = this.rooms.get(roomId);
    if (!room) return;
    this.leave(room, sub);
    room.catchingUp.delete(sub);
    this.maybeForget(roomId, room);
  }

  /** Whether `id` is a message a stream can resume after (rooms without history: still in memory). */
  hasRecent(roomId: string, id: string): boolean {
    return this.rooms.get(roomId)?.recent.some((m) => m.id === id) ?? false;
  }

  subscribers(roomId: string): number {
    const room = this.rooms.get(roomId);
    return room ? room.live.size + room.catchingUp.size : 0;
  }

  /** Server stopping: every stream ends with a reason, so clients resume elsewhere. */
  closeAll(): void {
    for (const [roomId, room] of this.rooms) {
      for (const sub of [...room.live, ...room.catchingUp.keys()]) this.remove(roomId, room, sub, ROOM_CLOSE.SERVER_STOPPING, "server_stopping");
    }
  }

  /**
   * A user's access was taken away: every stream of theirs, in every room, ends with
   * `access_revoked` (4304). `kind` limits it to streams opened with that kind of credential
   * (a password reset revokes login sessions, not API tokens); `except` keeps the streams of one
   * credential (the caller's own session when they end their other ones). Streams are matched by
   * the user of the credential that opened them. Resolves with how many were closed.
   */
  closeUser(userId: string, opts: { kind?: SubscriberCredential["kind"]; except?: string } = {}): number {
    return this.closeWhere((c) => c.userId === userId && (opts.kind === undefined || c.kind === opts.kind) && c.id !== opts.except);
  }

  /** One login session or API token was revoked: the streams it opened end with `access_revoked`. */
  closeCredential(credentialId: string): number {
    return this.closeWhere((c) => c.id === credentialId);
  }

  private closeWhere(match: (c: SubscriberCredential) => boolean): number {
    let n = 0;
    for (const [roomId, room] of [...this.rooms]) {
      for (const sub of [...room.live, ...room.catchingUp.keys()]) {
        if (!sub.credential || !match(sub.credential)) continue;
        this.remove(roomId, room, sub, ROOM_CLOSE.ACCESS_REVOKED, "access_revoked");
        n++;
      }
    }
    if (n > 0) this.log.info({ closed: n }, "room streams ended: their credential was revoked or their user disabled");
    return n;
  }

  /** A frame to every live subscriber: once to the topic, then to each direct one. */
  private fanOut(roomId: string, room: RoomState, frame: EncodedFrame): void {
    if (room.viaTopic.size > 0) this.toTopic(roomId, room, frame);
    for (const sub of room.direct) this.deliver(roomId, room, sub, frame);
  }

  /**
   * Publishes to the room's topic, keeping the slow-consumer rule exact enough that uWS never
   * skips a frame: every `checkBytes` of topic traffic, each topic subscriber's backlog is read
   * and those over the limit are dropped. uWS may hold a turn's published frames before they
   * show in a socket's backlog, so a turn of the loop publishes at most `checkBytes` to the
   * topic; past that, frames go to each subscriber directly (which drains the topic's queue for
   * that socket first, so order holds) with the exact per-send check. So a kept subscriber
   * never has more than maxBacklogBytes + 2 × checkBytes + one frame queued, far below Bun's
   * limit (checked in the constructor).
   */
  private toTopic(roomId: string, room: RoomState, frame: EncodedFrame): void {
    const text = frame.json;
    const bytes = Buffer.byteLength(text);
    if (room.topicBytes + bytes > this.checkBytes) {
      room.topicBytes = 0;
      for (const sub of room.viaTopic) if (sub.backlog() > this.o.maxBacklogBytes) this.drop(roomId, room, sub);
      if (room.viaTopic.size === 0) return;
    }
    if (room.tickBytes + bytes > this.checkBytes) {
      for (const sub of room.viaTopic) this.deliver(roomId, room, sub, frame);
      return;
    }
    if (room.tickBytes === 0) {
      if (this.touched.length === 0) setImmediate(() => this.newTurn());
      this.touched.push(room);
    }
    room.tickBytes += bytes;
    room.topicBytes += bytes;
    room.publisher!.publish(room.topic, text);
    this.stats.published++;
    this.stats.delivered += room.viaTopic.size;
  }

  private newTurn(): void {
    for (const room of this.touched) room.tickBytes = 0;
    this.touched = [];
  }

  private leave(room: RoomState, sub: Subscriber): void {
    room.live.delete(sub);
    room.direct.delete(sub);
    if (room.viaTopic.delete(sub)) {
      try {
        sub.topics!.unsubscribe(room.topic);
      } catch {
        // the socket is already closed
      }
      if (room.viaTopic.size === 0) room.publisher = null;
    }
  }

  private deliver(roomId: string, room: RoomState, sub: Subscriber, frame: EncodedFrame): void {
    sub.send(frame);
    this.stats.delivered++;
    if (sub.backlog() > this.o.maxBacklogBytes) this.drop(roomId, room, sub);
  }

  /** History goes at the reader's pace: wait while its backlog is over half the limit. False: it stalled, or left. */
  private async paced(room: RoomState, sub: Subscriber): Promise<boolean> {
    if (sub.backlog() <= this.o.maxBacklogBytes / 2) return room.catchingUp.has(sub);
    const deadline = Date.now() + this.o.historyStallMs;
    while (sub.backlog() > this.o.maxBacklogBytes / 2) {
      if (!room.catchingUp.has(sub)) return false;
      if (Date.now() > deadline) return false;
      await Bun.sleep(5);
    }
    return room.catchingUp.has(sub);
  }

  private drop(roomId: string, room: RoomState, sub: Subscriber): void {
    this.stats.dropped++;
    this.log.info({ room_id: roomId, member: sub.member }, "room subscriber too far behind: dropped (it resumes from its last id)");
    this.remove(roomId, room, sub, ROOM_CLOSE.SLOW_CONSUMER, "slow_consumer");
  }

  private remove(roomId: string, room: RoomState, sub: Subscriber, code: number, reason: string): void {
    this.leave(room, sub);
    room.catchingUp.delete(sub);
    try {
      sub.close(code, reason);
    } catch {
      // already gone
    }
    this.maybeForget(roomId, room);
  }

  private maybeForget(roomId: string, room: RoomState): void {
    // Rooms without history keep their recent messages while there is room for them: a dropped
    // stream resumes from them. Persisted rooms are re-read from the table.
    if (room.persist && room.live.size === 0 && room.catchingUp.size === 0) this.rooms.delete(roomId);
  }

  /**
   * Rooms without history hold their last messages in memory; past `maxIdleRecentRooms` of them
   * with nobody subscribed, the least recently used are forgotten (a stream resuming there gets
   * EVENT_NOT_FOUND and starts from now).
   */
  private evictIdleRecent(): void {
    const idle = (r: RoomState) => !r.persist && r.live.size === 0 && r.catchingUp.size === 0;
    let n = 0;
    for (const r of this.rooms.values()) if (idle(r)) n++;
    // Map order is insertion order, and `state` re-inserts on use: the first idle ones are the oldest.
    for (const [id, r] of this.rooms) {
      if (n <= this.o.maxIdleRecentRooms) return;
      if (idle(r)) {
        this.rooms.delete(id);
        n--;
      }
    }
  }

  private state(roomId: string, persist: boolean): RoomState {
    let room = this.rooms.get(roomId);
    if (room && !persist) {
      // Most recently used last, for evictIdleRecent.
      this.rooms.delete(roomId);
      this.rooms.set(roomId, room);
    }
    if (!room) {
      if (!persist && this.rooms.size > this.o.maxIdleRecentRooms) this.evictIdleRecent();
      room = {
        live: new Set(), direct: new Set(), viaTopic: new Set(), topic: `room:${this.id}:${roomId}`, publisher: null, topicBytes: 0, tickBytes: 0,
        catchingUp: new Map(), recent: [], persist,
      };
      this.rooms.set(roomId, room);
    }
    return room;
  }
}
