import { sha256Hex } from "../auth/secrets.ts";
import type { Queryable } from "../store/store.ts";

/**
 * Support codes (S2): 6 random digits, single use, expiring (default 20 minutes), created by a
 * technician for one attended session and cancellable. Only their SHA-256 is stored; a code is
 * unique among open codes (a partial unique index) and the used codes of live sessions, so a
 * fresh one is drawn on a clash. What
 * keeps 10^6 codes from being guessed is the per-IP lockout at /ws/support (10 failures, 15
 * minutes), like the reference's code-validate limiter.
 */
export const CODE_DIGITS = 6;

export function drawCode(): string {
  // Rejection sampling: uniform over 000000–999999.
  const limit = 4_294_000_000; // the largest multiple of 10^6 below 2^32
  for (;;) {
    const n = crypto.getRandomValues(new Uint32Array(1))[0]!;
    if (n < limit) return String(n % 1_000_000).padStart(CODE_DIGITS, "0");
  }
}

export const isCodeShaped = (code: string) => /^\d{6}$/.test(code);
const hashCode = (code: string) => sha256Hex(`tether-support-code:${code}`);

export async function createSupportCode(db: Queryable, r: { tenantId: string; userId: string; technician: string; sessionId: string; expiresAt: Date }): Promise<string> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const code = drawCode();
    // Unlike every open code (the unique index) and every used code whose session goes on: that
    // one still brings its person's agent back (reclaimSupportCode), to that session alone.
    const rows = await db.query(
      `insert into support_codes (id, tenant_id, code_hash, created_by, technician, session_id, expires_at)
       select $1, $2, $3, $4, $5, $6, $7
        where not exists (select 1 from support_codes c join sessions s on s.id = c.session_id
                           where c.code_hash = $3 and c.status = 'used' and s.ended_at is null)
       on conflict do nothing returning id`,
      [crypto.randomUUID(), r.tenantId, hashCode(code), r.userId, r.technician, r.sessionId, r.expiresAt]);
    if (rows[0]) return code;
    // A code with that hash is taken: expired open ones are closed so they stop blocking draws.
    await db.query("update support_codes set status = 'cancelled' where status = 'open' and expires_at < now()");
  }
  throw new Error("could not draw a free support code");
}

/** Marks an open, unexpired code used and returns its session; null for anything else. */
export async function claimSupportCode(db: Queryable, code: string): Promise<{ session_id: string; tenant_id: string; technician: string } | null> {
  if (!isCodeShaped(code)) return null;
  const [row] = await db.query<{ session_id: string; tenant_id: string; technician: string }>(
    `update support_codes set status = 'used', used_at = now()
      where code_hash = $1 and status = 'open' and expires_at > now() and session_id is not null
      returning session_id, tenant_id, technician`,
    [hashCode(code)]);
  return row ?? null;
}

/**
 * A claim whose socket closed before its session took the agent: the code is open again (if its
 * session is still waiting for it), so the person's agent can still use it.
 */
export async function unclaimSupportCode(db: Queryable, code: string, sessionId: string): Promise<void> {
  await db.query(
    `update support_codes c set status = 'open', used_at = null
      from sessions s where s.id = c.session_id and c.code_hash = $1 and c.session_id = $2 and c.status = 'used'
       and s.state = 'waiting_for_agent' and s.ended_at is null`,
    [hashCode(code), sessionId]);
}

/**
 * The person's agent comes back with the same code (its connection dropped, or closed before its
 * welcome): the used code's session, while its row says it has not ended. Whether it takes the
 * agent is the session actor's decision, not the row's: the row is written after the actor's
 * transitions, so its state lags (a just-lost agent would be refused). The actor takes it while
 * it waits for an agent or is in its grace period, refuses it (AGENT_CONNECTED) while its agent is
 * still connected, so a code never takes over a live connection, and refuses it (SESSION_ENDED)
 * once ended; the ended check here lags in that safe direction only. Someone else holding the
 * code could take the grace period; the consent already given is the person's, so that risk is
 * bounded by it.
 */
export async function reclaimSupportCode(db: Queryable, code: string): Promise<{ session_id: string; tenant_id: string; technician: string } | null> {
  if (!isCodeShaped(code)) return null;
  const [row] = await db.query<{ session_id: string; tenant_id: string; technician: string }>(
    `select c.session_id, c.tenant_id, c.technician from support_codes c join sessions s on s.id = c.session_id
      where c.code_hash = $1 and c.status = 'used' and s.ended_at is null`,
    [hashCode(code)]);
  return row ?? null;
}

/** Cancels an open code of the tenant; returns its session, or null. */
export async function cancelSupportCode(db: Queryable, tenantId: string, code: string): Promise<string | null> {
  if (!isCodeShaped(code)) return null;
  const [row] = await db.query<{ session_id: string }>(
    "update support_codes set status = 'cancelled' where tenant_id = $1 and code_hash = $2 and status = 'open' returning session_id",
    [tenantId, hashCode(code)]);
  return row?.session_id ?? null;
}
