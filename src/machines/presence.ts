import type { Effect } from "../actors/types.ts";
import type { AgentConnections } from "../http/ws/agent-connections.ts";
import type { Logger } from "../log.ts";
import { CLOSE } from "../protocol/agent.ts";
import type { Queryable, Store } from "../store/store.ts";

/**
 * The machine actor's effects: its presence projected onto `machine_presence` and its
 * inventory onto `machines` (which lists and search read, joined), and superseded connections
 * closed.
 */
export function machineEffects(db: Queryable, connections: AgentConnections, log: Logger, projections = new Projections(db, log)) {
  return {
    "machine.project": (e: Effect) => projections.project(e as unknown as Projection),
    "machine.close": (e: Effect) => {
      const { conn } = e as Effect & { conn: string };
      const socket = connections.get(conn);
      if (socket) {
        log.info({ machine_id: socket.machineId, conn }, "agent connection superseded");
        socket.close(CLOSE.SUPERSEDED, "superseded by a new connection");
      }
    },
  };
}

/** What `machine.project` carries (src/actors/machine.ts). */
export interface Projection {
  machine_id: string;
  status: string;
  last_seen: number | null;
  inventory: unknown;
  external_ip: string | null;
  agent_version: string | null;
}

/**
 * The machines' presence rows (and details), written from the machine actors' projections.
 *
 * A projection is the whole presence of a machine, so only the last one of a machine matters:
 * projections wait in `pending`, where a newer one of the same machine replaces the older, and
 * each write takes many machines' in one UPDATE. A machine has at most one write under way, and
 * its next projection waits for that write to finish, so its projections land in the order its
 * events were accepted (the actor hands them in after each event's commit, in event order): a
 * quick online → offline never lands as online. A storm of 5,000 connects (each one
 * `agent.connected`, carrying the inventory) is a handful of statements. On PostgreSQL a few
 * writes (of different machines) run at once. PGlite runs one statement at a time (on its
 * worker thread), so there writes are smaller (200 machines), and the handshakes' statements
 * queued behind one get their turn before the next; two are handed over at a time, so that the
 * next one waits in PGlite's queue rather than for this thread to hear the first one is done (one
 * at a time, the writes fell behind a storm's connects and finished 0.2-0.3 s after the last
 * agent was welcomed; docs/PERFORMANCE.md, Agents).
 */
export class Projections {
  private readonly pending = new Map<string, Projection>();
  /**
   * The details (inventory, external IP, agent version) last written for each machine, the
   * inventory by identity. A projection whose details are these is written as status and last
   * seen alone, to machine_presence only: 5.5 µs a row on PostgreSQL (docs/PERFORMANCE.md, Agents).
   * Identity, not equality: the machine actor keeps its inventory object while it is unchanged,
   * and any reload of the actor (a restart, a failed commit, the actor leaving memory and coming
   * back) makes new objects, so its next projection is written in full. So is a machine's first
   * after this process starts, and its next after a failed write: nothing lost with a crash, a
   * failed write or a reload stays behind in the row. Another process's late write cannot land
   * after this one's: with a lease (a clustered primary), every write is fenced by it, so a
   * deposed primary writes nothing once a standby has taken over.
   */
  private readonly written = new Map<string, Written>();
  private readonly waiters = new Map<string, Array<() => void>>();
  /** Machines with a write under way. */
  private readonly writing = new Set<string>();
  private writes = 0;
  private scheduled = false;
  private idle: Array<() => void> = [];
  private readonly maxBatch: number;
  private readonly maxWrites: number;

  /**
   * `fence`, when the server runs under a lease (src/cluster/lease.ts), runs in each write's
   * transaction, as it does for the journal's: `db` must then be a Store.
   */
  constructor(
    private readonly db: Queryable,
    private readonly log: Logger,
    private readonly fence?: (tx: Queryable) => Promise<void>,
  ) {
    const pglite = (db as Partial<Store>).flavor === "pglite";
    this.maxBatch = pglite ? 200 : 1_000;
    this.maxWrites = pglite ? 2 : 3;
  }

  /** Resolves when this projection (or a newer one of the same machine) is written. */
  project(p: Projection): Promise<void> {
    this.pending.set(p.machine_id, p);
    const done = new Promise<void>((resolve) => {
      const list = this.waiters.get(p.machine_id);
      if (list) list.push(resolve);
      else this.waiters.set(p.machine_id, [resolve]);
    });
    if (!this.scheduled && this.writes < this.maxWrites) {
      // The rest of this tick's projections join the write.
      this.scheduled = true;
      setImmediate(() => {
        this.scheduled = false;
        this.pump();
      });
    }
    return done;
  }

  /** Resolves once every projection handed in so far is written (or given up on). */
  flush(): Promise<void> {
    if (this.pending.size === 0 && this.writes === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  private pump(): void {
    while (this.writes < this.maxWrites) {
      const batch: Projection[] = [];
      const done: Array<() => void> = [];
      for (const [id, p] of this.pending) {
        if (batch.length >= this.maxBatch) break;
        if (this.writing.has(id)) continue; // after the write under way
        batch.push(p);
        this.pending.delete(id);
        this.writing.add(id);
        done.push(...(this.waiters.get(id) ?? []));
        this.waiters.delete(id);
      }
      if (batch.length === 0) break;
      this.writes++;
      void this.write(batch).then(() => {
        this.writes--;
        for (const p of batch) this.writing.delete(p.machine_id);
        for (const resolve of done) resolve();
        this.pump();
      });
    }
    if (this.pending.size === 0 && this.writes === 0) for (const resolve of this.idle.splice(0)) resolve();
  }

  private async write(batch: Projection[]): Promise<void> {
    try {
      await this.update(batch);
    } catch (err) {
      // Without the lease no row may be written: trying each alone would only fail again.
      if (batch.length === 1 || (err as { code?: string }).code === "LEASE_LOST") return this.failed(batch, err);
      // One row the database refuses (an inventory string it cannot store, say) must not keep
      // the other machines' presence out: the statement wrote nothing, so each is tried alone.
      for (const p of batch) await this.update([p]).catch((e) => this.failed([p], e));
    }
  }

  private async update(batch: Projection[]): Promise<void> {
    const full: Projection[] = [];
    const presence: Projection[] = [];
    for (const p of batch) (this.written.get(p.machine_id)?.matches(p) ? presence : full).push(p);
    if (full.length > 0) {
      await this.fenced((db) => this.writeFull(db, full));
      for (const p of full) this.written.set(p.machine_id, new Written(p));
    }
    if (presence.length > 0) await this.fenced((db) => this.writePresence(db, presence));
  }

  /**
   * One statement, in a transaction of its own behind the lease when there is one. Each on its
   * own, as without a lease: one transaction for both would hold the first one's row locks
   * while the second runs, inviting deadlocks with other multi-row updates of machines.
   */
  private async fenced(write: (db: Queryable) => Promise<void>): Promise<void> {
    const fence = this.fence;
    if (!fence) return write(this.db);
    await (this.db as Store).transaction(async (tx) => {
      await fence(tx);
      await write(tx);
    });
  }

  /**
   * The details to `machines` (its search document follows them) and the presence, in one
   * statement. A machine row whose details are already these is left alone: after a restart,
   * or a machine actor's reload, every machine's first projection is written in full, and in a
   * reconnect storm nearly all of them bring the details the row has (rewriting a 1–2 KB row to
   * the same values cost PGlite's thread about 150 µs a machine).
   *
   * PostgreSQL runs the CTE's UPDATE after the main one, so this locks the presence row, then
   * the machines row; nothing else locks a machines row and then its presence row (enrollment
   * reads presence without a lock), which is what keeps the two from deadlocking.
   */
  private async writeFull(db: Queryable, full: Projection[]): Promise<void> {
    await db.query(
      `with r as (select * from jsonb_to_recordset($1::text::jsonb) as r(id uuid, status text, last_seen bigint, inventory jsonb, external_ip text, agent_version text)),
            details as (
              update machines m
                 set inventory = coalesce(r.inventory, '{}'::jsonb), external_ip = r.external_ip, agent_version = r.agent_version, updated_at = now()
                from r
               where m.id = r.id
                 and (m.inventory is distinct from coalesce(r.inventory, '{}'::jsonb) or m.external_ip is distinct from r.external_ip or m.agent_version is distinct from r.agent_version))
       update machine_presence p ${SET_PRESENCE} from r where p.machine_id = r.id`,
      [JSON.stringify(full.map((p) => ({ id: p.machine_id, status: p.status, last_seen: p.last_seen, inventory: p.inventory ?? {}, external_ip: p.external_ip, agent_version: p.agent_version })))]);
  }

  // Presence alone: `machine_presence` only, a narrow row that stays on its page (schema v16).
  private async writePresence(db: Queryable, presence: Projection[]): Promise<void> {
    await db.query(
      `update machine_presence p ${SET_PRESENCE}
         from jsonb_to_recordset($1::text::jsonb) as r(id uuid, status text, last_seen bigint)
        where p.machine_id = r.id`,
      [JSON.stringify(presence.map((p) => ({ id: p.machine_id, status: p.status, last_seen: p.last_seen })))]);
  }

  /** The actor is the source of truth and projects again on its next change; as a failed effect was before, this is logged. */
  private failed(batch: Projection[], err: unknown): void {
    for (const p of batch) this.written.delete(p.machine_id);
    this.log.error({ err: (err as Error)?.message, machine_ids: batch.map((p) => p.machine_id) }, "machine projection failed");
  }
}

/** A presence row from a projection `r` (its last seen kept when the projection has none). */
const SET_PRESENCE = "set status = r.status, last_seen_at = case when r.last_seen is null then p.last_seen_at else to_timestamp(r.last_seen / 1000.0) end";

/** A machine's details as last written; the inventory held weakly (the actor holds it while it is current). */
class Written {
  private readonly inventory: WeakRef<object> | null;
  private readonly externalIp: string | null;
  private readonly agentVersion: string | null;
  constructor(p: Projection) {
    this.inventory = typeof p.inventory === "object" && p.inventory !== null ? new WeakRef(p.inventory) : null;
    this.externalIp = p.external_ip;
    this.agentVersion = p.agent_version;
  }
  matches(p: Projection): boolean {
    return this.inventory !== null && this.inventory.deref() === p.inventory && this.externalIp === p.external_ip && this.agentVersion === p.agent_version;
  }
}
