import type { Queryable } from "../store/store.ts";

/** The lease is not (or no longer) ours: whatever was about to be written must not be. */
export class LeaseLostError extends Error {
  readonly code = "LEASE_LOST";
}

export interface LeaseOptions {
  name?: string;
  /** How long a holder keeps the lease without renewing it. */
  ttlMs: number;
}

/**
 * The primary's lease in PostgreSQL (P9). One row: who holds it, until when (by the database's
 * clock) and its epoch. `acquire` takes it only when it has expired; `renew` extends it only
 * while it is still ours and unexpired; `fence(tx)`, run inside a write's transaction, proves
 * it is ours right now and holds a share lock on the row until that transaction ends, so a
 * standby's takeover (which must update the row) waits for the write to finish, and every write
 * after the takeover fails. `release` lets a standby take over at once.
 */
export class Lease {
  readonly name: string;
  readonly holder = crypto.randomUUID();
  private epochHeld: number | null = null;

  constructor(private readonly db: Queryable, private readonly o: LeaseOptions) {
    this.name = o.name ?? "primary";
  }

  get epoch(): number | null {
    return this.epochHeld;
  }

  get held(): boolean {
    return this.epochHeld !== null;
  }

  /** Takes the lease if it is free or expired; true if it is ours now. */
  async acquire(): Promise<boolean> {
    const rows = await this.db.query<{ epoch: number }>(
      `insert into leases (name, holder, epoch, expires_at) values ($1, $2, 1, now() + make_interval(secs => $3::double precision / 1000))
       on conflict (name) do update
         set holder = excluded.holder, epoch = leases.epoch + 1, expires_at = excluded.expires_at, acquired_at = now()
         where leases.expires_at < now()
       returning epoch`,
      [this.name, this.holder, this.o.ttlMs]);
    this.epochHeld = rows[0] ? Number(rows[0].epoch) : null;
    return this.held;
  }

  /** Extends the lease; false if it expired or someone else holds it (then it is lost for good). */
  async renew(): Promise<boolean> {
    if (this.epochHeld === null) return false;
    const rows = await this.db.query(
      `update leases set expires_at = now() + make_interval(secs => $4::double precision / 1000)
        where name = $1 and holder = $2 and epoch = $3 and expires_at > now() returning 1`,
      [this.name, this.holder, this.epochHeld, this.o.ttlMs]);
    if (rows.length === 0) this.epochHeld = null;
    return this.held;
  }

  /** Inside a write's transaction: throws LeaseLostError unless the lease is ours right now. */
  async fence(tx: Queryable): Promise<void> {
    if (this.epochHeld === null) throw new LeaseLostError(`not the holder of lease ${this.name}`);
    const rows = await tx.query(
      "select 1 from leases where name = $1 and holder = $2 and epoch = $3 and expires_at > now() for share",
      [this.name, this.holder, this.epochHeld]);
    if (rows.length === 0) {
      this.epochHeld = null;
      throw new LeaseLostError(`lease ${this.name} was lost (expired, or taken by another process)`);
    }
  }

  /** Gives the lease up now (graceful shutdown): a standby takes over without waiting for it to expire. */
  async release(): Promise<void> {
    if (this.epochHeld === null) return;
    await this.db.query("update leases set expires_at = now() - interval '1 second' where name = $1 and holder = $2 and epoch = $3", [this.name, this.holder, this.epochHeld]);
    this.epochHeld = null;
  }

  /** Who holds it, for /readyz and operators. */
  async current(): Promise<{ holder: string; epoch: number; expires_in_ms: number } | null> {
    const [row] = await this.db.query<{ holder: string; epoch: number; ms: number }>(
      "select holder, epoch, (extract(epoch from (expires_at - now())) * 1000)::float8 as ms from leases where name = $1", [this.name]);
    return row ? { holder: row.holder, epoch: Number(row.epoch), expires_in_ms: Math.round(Number(row.ms)) } : null;
  }
}
