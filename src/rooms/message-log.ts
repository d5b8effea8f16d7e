import { decodeTime, monotonicFactory } from "ulid";
import type { RoomMessage } from "../protocol/rooms.ts";
import type { Queryable } from "../store/store.ts";
import { insertMessages, lastMessageId, messageByClientId } from "./rooms.ts";

/** A message before it has an id. */
export type Draft = Omit<RoomMessage, "id">;
export interface Appended {
  message: RoomMessage;
  /** The same (sender, client_id) was already stored: this is that message, nothing new was written. */
  duplicate: boolean;
}

interface Pending {
  draft: Draft;
  persist: boolean;
  resolve(a: Appended): void;
  reject(err: Error): void;
}
interface Lane {
  queue: Pending[];
  busy: boolean;
  last: string | null | undefined;
}

/**
 * The order of a room's messages. Per room, drafts are taken in arrival order, given ULIDs in
 * increasing order, committed together (one insert for everything that queued up while the
 * previous write was in flight), and only then handed to `publish`, in id order. So whatever a
 * reader sees in the table is a prefix of what subscribers are sent; that is what lets a
 * subscriber read history and then switch to live without a gap or a duplicate (hub.ts).
 * A post is acknowledged once its row is committed.
 */
export class MessageLog {
  private readonly lanes = new Map<string, Lane>();
  private readonly nextUlid = monotonicFactory();

  constructor(
    private readonly db: Queryable,
    private readonly publish: (roomId: string, message: RoomMessage, persist: boolean) => void,
    private readonly maxBatch = 500,
  ) {}

  append(roomId: string, draft: Draft, persist: boolean): Promise<Appended> {
    let lane = this.lanes.get(roomId);
    if (!lane) this.lanes.set(roomId, (lane = { queue: [], busy: false, last: undefined }));
    const done = new Promise<Appended>((resolve, reject) => lane.queue.push({ draft, persist, resolve, reject }));
    if (!lane.busy) void this.drain(roomId, lane);
    return done;
  }

  /** Rooms with writes queued or in flight (for shutdown and tests). */
  get pending(): number {
    let n = 0;
    for (const lane of this.lanes.values()) n += lane.queue.length + (lane.busy ? 1 : 0);
    return n;
  }

  private async drain(roomId: string, lane: Lane): Promise<void> {
    lane.busy = true;
    try {
      while (lane.queue.length > 0) {
        const batch = lane.queue.splice(0, this.maxBatch);
        try {
          await this.write(roomId, lane, batch);
        } catch (err) {
          for (const p of batch) p.reject(err as Error);
        }
      }
    } finally {
      lane.busy = false;
      if (lane.queue.length === 0) this.lanes.delete(roomId);
    }
  }

  private async write(roomId: string, lane: Lane, batch: Pending[]): Promise<void> {
    // After a restart (or another process) the room's ids must still grow: start above the stored last one.
    if (lane.last === undefined) lane.last = batch[0]!.persist ? await lastMessageId(this.db, roomId) : null;
    const rows = batch.map((p) => ({ id: this.idAfter(lane), ...p.draft }));
    const persisted = rows.filter((_, i) => batch[i]!.persist);
    const written = persisted.length > 0 ? await insertMessages(this.db, persisted) : new Set<string>();
    const out: Appended[] = [];
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i]!;
      if (!batch[i]!.persist || written.has(row.id)) {
        out.push({ message: row, duplicate: false });
        continue;
      }
      const stored = row.client_id ? await messageByClientId(this.db, roomId, row.sender, row.client_id) : null;
      if (!stored) throw new Error(`room ${roomId}: message ${row.id} was neither written nor found by client id`);
      out.push({ message: stored, duplicate: true });
    }
    for (let i = 0; i < out.length; i++) {
      if (!out[i]!.duplicate) this.publish(roomId, out[i]!.message, batch[i]!.persist);
      batch[i]!.resolve(out[i]!);
    }
  }

  private idAfter(lane: Lane): string {
    let id = this.nextUlid();
    // A clock that went back (or another host's ids) must not sort a new message before an old one.
    if (lane.last && id <= lane.last) id = this.nextUlid(decodeTime(lane.last) + 1);
    lane.last = id;
    return id;
  }
}
