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
  send(frame: EncodedFrame): void;
  backlog(): number;
  close(code: number, reason: string): void;
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
  /** Subscribers receiving live frames. */
  live: Set<Subscriber>;
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
}
const DEFAULTS: HubOptions = { maxBacklogBytes: 1024 * 1024, historyStallMs: 30_000, maxCatchUpBuffer: 10_000, recentKept: 1_000, historyPage: 500 };

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
  stats = { delivered: 0, dropped: 0 };

  constructor(private readonly db: Queryable, private readonly log: Logger, opts: Partial<HubOptions> = {}) {
    this.o = { ...DEFAULTS, ...opts };
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
      if (room.live.size > 0) {
        const frame = new EncodedFrame({ t: "message", message });
        for (const sub of room.live) this.deliver(roomId, room, sub, frame);
      }
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
    const frame = new EncodedFrame({ t: "epoch", epoch: epoch.epoch, keyed_epoch: epoch.keyed_epoch });
    for (const sub of room.live) this.deliver(roomId, room, sub, frame);
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
    if (sub.backlog() > this.o.maxBacklogBytes) this.drop(roomId, room, sub);
  }

  /** The subscriber went away by itself (socket closed, stream cancelled). */
  unsubscribe(roomId: string, sub: Subscriber): void {
    const room = this.rooms.get(roomId);
    if (!room) return;
    room.live.delete(sub);
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
    room.live.delete(sub);
    room.catchingUp.delete(sub);
    try {
      sub.close(code, reason);
    } catch {
      // already gone
    }
    this.maybeForget(roomId, room);
  }

  private maybeForget(roomId: string, room: RoomState): void {
    // Rooms without history keep their recent messages while the process lives: a dropped
    // stream resumes from them. Persisted rooms are re-read from the table.
    if (room.persist && room.live.size === 0 && room.catchingUp.size === 0) this.rooms.delete(roomId);
  }

  private state(roomId: string, persist: boolean): RoomState {
    let room = this.rooms.get(roomId);
    if (!room) this.rooms.set(roomId, (room = { live: new Set(), catchingUp: new Map(), recent: [], persist }));
    return room;
  }
}
