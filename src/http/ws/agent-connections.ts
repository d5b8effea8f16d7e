import type { Queryable } from "../../store/store.ts";

/**
 * The live agent sockets of this process, by machine. The machine actor decides who is
 * connected; this registry holds the sockets so the actor's effects can reach them, drops a
 * silent agent, and notices revocations.
 *
 * Revocation: twice a second one query asks what changed, not about every live socket: the
 * keys revoked since the previous sweep (with a minute of overlap, for transactions that
 * committed late), the machines disabled since (with the same overlap) and the machines waiting
 * for approval. Removing a machine revokes its keys in the same transaction, so removal,
 * revocation, re-enrollment and approval all show up as a revoked key, and a machine sent back
 * to pending as a pending machine. Whichever process made
 * the change, a live agent it concerns is closed within a second. The cost follows the changes
 * (and two scans of small columns), not the number of connected agents.
 *
 * Each key's `last_used_at` is kept here and written once a second for all the keys used since,
 * in one statement, instead of one commit per connect; and, as for logins and API tokens, at
 * most once a minute per key: a key whose recorded use is less than a minute old is not written
 * again (a reconnect storm after a network blip writes nothing).
 */
export interface AgentSocket {
  conn: string;
  machineId: string;
  keyId: string;
  tenantId: string;
  lastSeen: number;
  close(code: number, reason: string): void;
}

/** Overlap between sweeps: a revocation committed this long after its transaction began is still seen. */
const OVERLAP_SECONDS = 60;
const TOUCH_FLUSH_MS = 1_000;
/** `last_used_at`'s precision: a use this soon after the recorded one is not written. */
export const TOUCH_EVERY_MS = 60_000;

export class AgentConnections {
  private readonly byConn = new Map<string, AgentSocket>();
  /** Keys used since the last flush, with when. */
  private touched = new Map<string, number>();
  private readonly flushHooks: Array<() => void> = [];
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private toucher: ReturnType<typeof setInterval> | null = null;
  private checking = false;
  private touching: Promise<void> | null = null;
  /** The database's clock at the previous sweep; null: none since the last time no agent was connected. */
  private since: string | null = null;

  constructor(
    private readonly db: Queryable,
    private readonly offlineAfterMs: number,
  ) {}

  start(): void {
    // A silent agent is closed within offlineAfterMs plus one sweep; a revoked one within 500 ms.
    this.sweeper = setInterval(() => void this.sweep(), Math.max(50, Math.min(500, this.offlineAfterMs / 4)));
    this.sweeper.unref?.();
    this.toucher = setInterval(() => void this.flushTouched(), TOUCH_FLUSH_MS);
    this.toucher.unref?.();
  }

  stop(code: number, reason: string): void {
    if (this.sweeper) clearInterval(this.sweeper);
    if (this.toucher) clearInterval(this.toucher);
    for (const s of [...this.byConn.values()]) s.close(code, reason);
  }

  /** Writes the pending `last_used_at` updates, and what `beforeFlush` hooks hold: at shutdown, before the store closes. */
  async flush(): Promise<void> {
    for (const f of this.flushHooks) f();
    await this.flushTouched();
  }

  /** `f` runs at `flush()` (the agent socket's refusal summaries, queued for the audit's own flush after it). */
  beforeFlush(f: () => void): void {
    this.flushHooks.push(f);
  }

  add(socket: AgentSocket): void {
    this.byConn.set(socket.conn, socket);
  }

  remove(conn: string): void {
    this.byConn.delete(conn);
  }

  get(conn: string): AgentSocket | undefined {
    return this.byConn.get(conn);
  }

  /**
   * Records that a key was used just now; written to `agent_keys.last_used_at` within a second,
   * unless `recordedMs` (its `last_used_at` as read with the key) is less than a minute old.
   */
  touch(keyId: string, recordedMs: number | null = null): void {
    const now = Date.now();
    if (recordedMs !== null && now - recordedMs < TOUCH_EVERY_MS) return;
    this.touched.set(keyId, now);
  }

  /** The live connection of a machine, if any (the newest, should two overlap for a moment). */
  connOf(machineId: string): string | null {
    let found: string | null = null;
    for (const s of this.byConn.values()) if (s.machineId === machineId) found = s.conn;
    return found;
  }

  get size(): number {
    return this.byConn.size;
  }

  /** Closes every socket of a machine (removed, disabled). */
  closeMachine(machineId: string, code: number, reason: string): number {
    const sockets = [...this.byConn.values()].filter((s) => s.machineId === machineId);
    for (const s of sockets) s.close(code, reason);
    return sockets.length;
  }

  /** Closes every socket authenticated with a key (revoked). */
  closeKey(keyId: string, code: number, reason: string): number {
    const sockets = [...this.byConn.values()].filter((s) => s.keyId === keyId);
    for (const s of sockets) s.close(code, reason);
    return sockets.length;
  }

  private async sweep(): Promise<void> {
    const now = Date.now();
    for (const s of this.byConn.values()) if (now - s.lastSeen > this.offlineAfterMs) s.close(4009, "no heartbeat");
    if (this.checking) return;
    if (this.byConn.size === 0) {
      // Nobody to close. A key revoked meanwhile is refused at the next hello, which reads it.
      this.since = null;
      return;
    }
    this.checking = true;
    try {
      const rows = await this.db.query<{ what: "now" | "revoked" | "disabled" | "pending"; id: string | null; removed: boolean | null; at: string }>(
        `select 'now' as what, null::uuid as id, null::boolean as removed, now()::text as at
         union all
         select 'revoked', k.id, m.deleted_at is not null, null
           from agent_keys k join machines m on m.id = k.machine_id
          where k.revoked_at >= coalesce($1::timestamptz, now()) - interval '${OVERLAP_SECONDS} seconds'
         union all
         select 'disabled', m.id, null, null from machines m
          where m.disabled_at >= coalesce($1::timestamptz, now()) - interval '${OVERLAP_SECONDS} seconds'
         union all
         select 'pending', m.id, null, null from machines m where m.enrollment_state <> 'active'`,
        [this.since]);
      const keys = new Map<string, boolean>();
      const pending = new Set<string>();
      const disabled = new Set<string>();
      for (const r of rows) {
        if (r.what === "now") this.since = r.at;
        else if (r.what === "revoked") keys.set(r.id!, Boolean(r.removed));
        else (r.what === "disabled" ? disabled : pending).add(r.id!);
      }
      if (keys.size === 0 && pending.size === 0 && disabled.size === 0) return;
      for (const s of [...this.byConn.values()]) {
        const removed = keys.get(s.keyId);
        // Removed before revoked: removing a machine also revokes its keys, and 4007 says why.
        if (removed !== undefined) s.close(removed ? 4007 : 4004, removed ? "machine removed" : "key revoked");
        else if (disabled.has(s.machineId)) s.close(4011, "machine disabled");
        else if (pending.has(s.machineId)) s.close(4006, "machine pending approval");
      }
    } catch {
      // The store is unreachable: try again on the next sweep (`since` stays where it was).
    } finally {
      this.checking = false;
    }
  }

  private flushTouched(): Promise<void> {
    // One write at a time; a flush asked for meanwhile waits for it and then writes the rest.
    const run = async () => {
      while (this.touched.size > 0) {
        const batch = this.touched;
        this.touched = new Map();
        try {
          await this.db.query(
            `update agent_keys k set last_used_at = to_timestamp(r.at / 1000.0)
               from jsonb_to_recordset($1::text::jsonb) as r(id uuid, at bigint)
              where k.id = r.id and (k.last_used_at is null or k.last_used_at < to_timestamp(r.at / 1000.0))`,
            [JSON.stringify([...batch].map(([id, at]) => ({ id, at })))]);
        } catch {
          // Keep them for the next flush, unless a newer use was recorded meanwhile.
          for (const [id, at] of batch) if (!this.touched.has(id)) this.touched.set(id, at);
          return;
        }
      }
    };
    const prev = this.touching ?? Promise.resolve();
    const next = prev.then(run).finally(() => {
      if (this.touching === next) this.touching = null;
    });
    this.touching = next;
    return next;
  }
}
