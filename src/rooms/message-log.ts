import { decodeTime, monotonicFactory } from "ulid";
import type { RoomMessage } from "../protocol/rooms.ts";
import type { Queryable, Store } from "../store/store.ts";
import { insertIfAllowed, messageByClientId } from "./rooms.ts";

/** A message before it has an id. */
export type Draft = Omit<RoomMessage, "id">;
export interface Appended {
  message: RoomMessage;
  /** The same (sender, client_id) was already stored: this is that message, nothing new was written. */
  duplicate: boolean;
}

/**
 * A post refused at commit: its sender was no longer a member, or (encrypted rooms) the room had
 * moved to another key epoch, by the time its row was written. Only that post fails.
 */
export class Refused extends Error {
  constructor(readonly code: "NOT_A_MEMBER" | "WRONG_EPOCH", roomId: string) {
    super(code === "NOT_A_MEMBER" ? `room ${roomId}: the sender is no longer a member` : `room ${roomId}: the room has moved to another key epoch`);
  }
}

interface Pending {
  roomId: string;
  draft: Draft;
  resolve(a: Appended): void;
  reject(err: Error): void;
}

/**
 * The order of every room's messages. Drafts are taken in arrival order and given ULIDs that
 * increase within each room; a persisted room's drafts are committed together with everything
 * else that queued up while the previous write was in flight — one insert for all rooms (group
 * commit) — and only then handed to `publish`, in id order. So whatever a reader sees in the
 * table is a prefix of what subscribers are sent; that is what lets a subscriber read history
 * and then switch to live without a gap or a duplicate (hub.ts). A post is acknowledged once
 * its row is committed. If a batch of several rooms fails, each room's part is tried on its own,
 * so one room's bad row fails only that room's posts. Rooms without persisted history write
 * nothing: their messages get an id and are published at once.
 */
export class MessageLog {
  private queue: Pending[] = [];
  private busy = false;
  /** The write in flight (its insert, then its publishes). */
  private current: Promise<void> | null = null;
  /** Each room's last id (null: none), so that ids keep growing across restarts and clock steps. */
  private readonly last = new Map<string, string | null>();
  private readonly nextUlid = monotonicFactory();
  /** Inserts done and the messages they carried (for /metrics-style figures and benchmarks). */
  readonly stats = { batches: 0, messages: 0 };

  constructor(
    private readonly db: Queryable & Pick<Store, "transaction">,
    private readonly publish: (roomId: string, message: RoomMessage, persist: boolean) => void,
    private readonly maxBatch = 1_000,
    /** Rooms whose last id is kept in memory; beyond, the oldest is forgotten and read again when needed. */
    private readonly lastKept = 20_000,
    /** The primary's lease (src/cluster): checked in the insert's transaction, as the journal does. */
    private readonly fence?: (tx: Queryable) => Promise<void>,
  ) {}

  append(roomId: string, draft: Draft, persist: boolean): Promise<Appended> {
    if (!persist) {
      // Nothing to commit: ordered by this call, published now.
      const message = { id: this.idAfter(roomId), ...draft };
      this.publish(roomId, message, false);
      return Promise.resolve({ message, duplicate: false });
    }
    const done = new Promise<Appended>((resolve, reject) => this.queue.push({ roomId, draft, resolve, reject }));
    if (!this.busy) void this.drain();
    return done;
  }

  /** Messages queued or being written (for shutdown and tests). */
  get pending(): number {
    return this.queue.length + (this.busy ? 1 : 0);
  }

  private async drain(): Promise<void> {
    this.busy = true;
    try {
      while (this.queue.length > 0) {
        // Let the rest of this turn's requests reach append first: with an in-process database
        // (PGlite) nothing else runs while a statement does, so without this pause every
        // insert would carry one message.
        await new Promise<void>((resolve) => setImmediate(resolve));
        const batch = this.queue.length <= this.maxBatch ? this.queue : this.queue.slice(0, this.maxBatch);
        this.queue = this.queue.length <= this.maxBatch ? [] : this.queue.slice(this.maxBatch);
        try {
          await this.tracked(this.write(batch));
        } catch (err) {
          const rooms = new Set(batch.map((p) => p.roomId));
          if (rooms.size === 1) {
            for (const p of batch) p.reject(err as Error);
            continue;
          }
          // One room's rows must not fail the others': each room on its own, in order.
          for (const room of rooms) {
            const part = batch.filter((p) => p.roomId === room);
            await this.tracked(this.write(part)).catch((e: Error) => {
              for (const p of part) p.reject(e);
            });
          }
        }
      }
    } finally {
      this.busy = false;
    }
  }

  /**
   * Resolves once every message committed so far has been handed to `publish`. A reader of the
   * table may see a batch's rows between its commit and its publish; the hub waits for this
   * before it switches such a reader from history to live (so it is not sent them twice).
   */
  settled(): Promise<void> {
    return this.current ?? Promise.resolve();
  }

  private tracked(write: Promise<void>): Promise<void> {
    const current = (this.current = write.then(() => {}, () => {}));
    void current.then(() => {
      if (this.current === current) this.current = null;
    });
    return write;
  }

  private async write(batch: Pending[]): Promise<void> {
    // After a restart (or another process) a room's ids must still grow: start above the stored last one.
    const unknown = [...new Set(batch.filter((p) => !this.last.has(p.roomId)).map((p) => p.roomId))];
    if (unknown.length > 0) {
      const rows = await this.db.query<{ room_id: string; id: string | null }>(
        `select r.room_id, (select max(m.id) from room_messages m where m.room_id = r.room_id::uuid) as id
           from jsonb_array_elements_text($1::text::jsonb) as r(room_id)`, [JSON.stringify(unknown)]);
      for (const r of rows) this.remember(r.room_id, r.id);
      for (const room of unknown) if (!this.last.has(room)) this.remember(room, null);
    }
    const rows: RoomMessage[] = batch.map((p) => ({ id: this.idAfter(p.roomId), ...p.draft }));
    const fence = this.fence;
    const outcome = fence
      ? await this.db.transaction(async (tx) => {
        await fence(tx);
        return insertIfAllowed(tx, rows);
      })
      : await insertIfAllowed(this.db, rows);
    this.stats.batches++;
    this.stats.messages += rows.length;
    // Committed: from here nothing may throw (the caller would write the batch again). Written
    // rows are published and answered in id order; a duplicate whose stored row cannot be read
    // fails alone.
    for (let i = 0; i < rows.length; i++) {
      const row = rows[i]!;
      const p = batch[i]!;
      const o = outcome.get(row.id);
      if (o === "written") {
        this.publish(p.roomId, row, true);
        p.resolve({ message: row, duplicate: false });
        continue;
      }
      if (o === "NOT_A_MEMBER" || o === "WRONG_EPOCH") {
        p.reject(new Refused(o, row.room_id));
        continue;
      }
      try {
        const stored = row.client_id ? await messageByClientId(this.db, row.room_id, row.sender, row.client_id) : null;
        if (!stored) throw new Error(`room ${row.room_id}: message ${row.id} was neither written nor found by client id`);
        p.resolve({ message: stored, duplicate: true });
      } catch (err) {
        p.reject(err as Error);
      }
    }
  }

  private remember(roomId: string, id: string | null): void {
    this.last.delete(roomId);
    this.last.set(roomId, id);
    if (this.last.size > this.lastKept) this.last.delete(this.last.keys().next().value!);
  }

  private idAfter(roomId: string): string {
    const last = this.last.get(roomId) ?? null;
    let id = this.nextUlid();
    // A clock that went back (or another host's ids) must not sort a new message before an old one.
    if (last && id <= last) id = this.nextUlid(decodeTime(last) + 1);
    this.last.set(roomId, id);
    return id;
  }
}
