import type { Queryable } from "../../store/store.ts";

/**
 * The live agent sockets of this process, by machine. The machine actor decides who is
 * connected; this registry holds the sockets so the actor's effects can reach them, drops a
 * silent agent, and twice a second asks the database whether any live socket's key was revoked
 * or its machine removed or sent back to pending: one query however many agents are
 * connected, and it catches every way a key can be revoked, so a revocation disconnects the
 * agent within a second.
 */
export interface AgentSocket {
  conn: string;
  machineId: string;
  keyId: string;
  tenantId: string;
  lastSeen: number;
  close(code: number, reason: string): void;
}

export class AgentConnections {
  private readonly byConn = new Map<string, AgentSocket>();
  private sweeper: ReturnType<typeof setInterval> | null = null;

  private checking = false;

  constructor(
    private readonly db: Queryable,
    private readonly offlineAfterMs: number,
  ) {}

  start(): void {
    // A silent agent is closed within offlineAfterMs plus one sweep; a revoked one within 500 ms.
    this.sweeper = setInterval(() => void this.sweep(), Math.max(50, Math.min(500, this.offlineAfterMs / 4)));
    this.sweeper.unref?.();
  }

  stop(code: number, reason: string): void {
    if (this.sweeper) clearInterval(this.sweeper);
    for (const s of this.byConn.values()) s.close(code, reason);
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
    let n = 0;
    for (const s of this.byConn.values()) if (s.machineId === machineId) (s.close(code, reason), n++);
    return n;
  }

  /** Closes every socket authenticated with a key (revoked). */
  closeKey(keyId: string, code: number, reason: string): number {
    let n = 0;
    for (const s of this.byConn.values()) if (s.keyId === keyId) (s.close(code, reason), n++);
    return n;
  }

  private async sweep(): Promise<void> {
    const now = Date.now();
    for (const s of this.byConn.values()) if (now - s.lastSeen > this.offlineAfterMs) s.close(4009, "no heartbeat");
    if (this.checking || this.byConn.size === 0) return;
    this.checking = true;
    try {
      const keys = [...new Set([...this.byConn.values()].map((s) => s.keyId))];
      const rows = await this.db.query<{ key_id: string; revoked: boolean; removed: boolean; pending: boolean }>(
        `select k.id as key_id, k.revoked_at is not null as revoked, m.deleted_at is not null as removed, m.enrollment_state <> 'active' as pending
           from agent_keys k join machines m on m.id = k.machine_id
          where k.id in (select (jsonb_array_elements_text($1::text::jsonb))::uuid)`,
        [JSON.stringify(keys)]);
      for (const r of rows) {
        // Removed before revoked: removing a machine also revokes its keys, and 4007 says why.
        if (r.removed) this.closeKey(r.key_id, 4007, "machine removed");
        else if (r.revoked) this.closeKey(r.key_id, 4004, "key revoked");
        else if (r.pending) this.closeKey(r.key_id, 4006, "machine pending approval");
      }
    } catch {
      // The store is unreachable: try again on the next sweep.
    } finally {
      this.checking = false;
    }
  }
}
