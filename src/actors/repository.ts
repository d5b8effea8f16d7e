import type { Queryable } from "../store/store.ts";
import { parseAddress, type ActorEvent, type Address, type PersistedState, type StampedEvent } from "./types.ts";

/** Read side of the runtime's tables. All writes go through the Journal's group commit. */

export interface SnapshotRow {
  seq: number;
  version: number;
  at: number;
  state: PersistedState;
}
export interface JournalRow {
  seq: number;
  version: number;
  at: number;
  event: StampedEvent;
}
export interface StoredActor {
  kind: string;
  id: string;
  status: "active" | "passive" | "failed" | null;
  failure: string | null;
  snapshot: SnapshotRow | null;
  tail: JournalRow[];
}

/**
 * Several actors of one kind, in the order of `ids`, in three queries however many there are:
 * a wave of 5,000 machines connecting whose actors are not in memory is a handful of
 * statements, not 15,000.
 */
export async function loadActors(db: Queryable, kind: string, ids: readonly string[]): Promise<StoredActor[]> {
  const list = JSON.stringify([...new Set(ids)]);
  const metas = await db.query<{ actor_id: string; status: StoredActor["status"]; failure: string | null }>(
    "select actor_id, status, failure from actors where kind = $1 and actor_id in (select jsonb_array_elements_text($2::text::jsonb))",
    [kind, list]);
  const heads = await db.query<SnapshotRow & { actor_id: string }>(
    `select i.id as actor_id, s.seq, s.version, s.at, s.state
       from jsonb_array_elements_text($2::text::jsonb) as i(id)
       join lateral (select seq, version, at, state from actor_snapshots s
                      where s.kind = $1 and s.actor_id = i.id order by seq desc limit 1) s on true`,
    [kind, list]);
  // Each actor's tail after its latest snapshot, through the primary key (as in loadActiveActors).
  const tails = await db.query<JournalRow & { actor_id: string }>(
    `select i.id as actor_id, j.seq, j.version, j.at, j.event
       from jsonb_array_elements_text($2::text::jsonb) as i(id)
       cross join lateral (select coalesce(max(seq), 0) as seq from actor_snapshots s
                            where s.kind = $1 and s.actor_id = i.id) s
       join lateral (select seq, version, at, event from actor_journal j
                      where j.kind = $1 and j.actor_id = i.id and j.seq > s.seq
                      order by j.seq) j on true`,
    [kind, list]);
  const meta = new Map(metas.map((m) => [m.actor_id, m]));
  const head = new Map(heads.map((h) => [h.actor_id, h]));
  const tail = new Map<string, JournalRow[]>();
  for (const t of tails) {
    const rows = tail.get(t.actor_id) ?? [];
    if (rows.length === 0) tail.set(t.actor_id, rows);
    rows.push({ seq: t.seq, version: t.version, at: t.at, event: t.event });
  }
  return ids.map((id) => {
    const m = meta.get(id);
    const h = head.get(id);
    return {
      kind, id, status: m?.status ?? null, failure: m?.failure ?? null,
      snapshot: h ? { seq: h.seq, version: h.version, at: h.at, state: h.state } : null,
      // Sorting (cheap on sorted input) makes the lateral join's order a guarantee.
      tail: (tail.get(id) ?? []).slice().sort((x, y) => x.seq - y.seq),
    };
  });
}

/**
 * Every actor that was resident with un-snapshotted events when the process stopped, with its
 * latest snapshot and journal tail: two queries however many there are.
 */
export async function loadActiveActors(db: Queryable): Promise<StoredActor[]> {
  const heads = await db.query<{ kind: string; actor_id: string; seq: number | null; version: number | null; at: number | null; state: PersistedState | null }>(
    `select a.kind, a.actor_id, s.seq, s.version, s.at, s.state
       from actors a
       left join lateral (
         select seq, version, at, state from actor_snapshots s
          where s.kind = a.kind and s.actor_id = a.actor_id order by seq desc limit 1) s on true
      where a.status = 'active'`);
  // Each actor's snapshot boundary once, and its tail through the primary key: no global sort.
  const tails = await db.query<JournalRow & { kind: string; actor_id: string }>(
    `select a.kind, a.actor_id, j.seq, j.version, j.at, j.event
       from actors a
       cross join lateral (select coalesce(max(seq), 0) as seq from actor_snapshots s
                            where s.kind = a.kind and s.actor_id = a.actor_id) s
       join lateral (select seq, version, at, event from actor_journal j
                      where j.kind = a.kind and j.actor_id = a.actor_id and j.seq > s.seq
                      order by j.seq) j on true
      where a.status = 'active'`);
  const byAddress = new Map<string, StoredActor>();
  for (const h of heads) {
    byAddress.set(`${h.kind}/${h.actor_id}`, {
      kind: h.kind, id: h.actor_id, status: "active", failure: null, tail: [],
      snapshot: h.seq === null ? null : { seq: h.seq, version: h.version!, at: h.at!, state: h.state! },
    });
  }
  for (const t of tails) byAddress.get(`${t.kind}/${t.actor_id}`)?.tail.push({ seq: t.seq, version: t.version, at: t.at, event: t.event });
  // The lateral join yields each tail in seq order; sorting (cheap on sorted input) makes it a guarantee.
  for (const a of byAddress.values()) a.tail.sort((x, y) => x.seq - y.seq);
  return [...byAddress.values()];
}

/** Durable timers in deadline order: all of them, or one actor's. */
export async function loadTimers(db: Queryable, address?: Address): Promise<Array<{ address: Address; key: string; dueAt: number; event: ActorEvent }>> {
  const cols = "select kind, actor_id, key, due_at, event from actor_timers";
  type Row = { kind: string; actor_id: string; key: string; due_at: number; event: ActorEvent };
  let rows: Row[];
  if (address) {
    const { kind, id } = parseAddress(address);
    rows = await db.query<Row>(`${cols} where kind = $1 and actor_id = $2 order by due_at`, [kind, id]);
  } else {
    rows = await db.query<Row>(`${cols} order by due_at`);
  }
  return rows.map((r) => ({ address: `${r.kind}/${r.actor_id}` as Address, key: r.key, dueAt: r.due_at, event: r.event }));
}

export async function loadFailedActors(db: Queryable): Promise<Array<{ address: Address; failure: string }>> {
  const rows = await db.query<{ kind: string; actor_id: string; failure: string | null }>(
    "select kind, actor_id, failure from actors where status = 'failed'");
  return rows.map((r) => ({ address: `${r.kind}/${r.actor_id}` as Address, failure: r.failure ?? "failed" }));
}

export async function countActorsByStatus(db: Queryable): Promise<Array<{ kind: string; status: string; n: number }>> {
  const rows = await db.query<{ kind: string; status: string; n: number }>(
    "select kind, status, count(*)::int as n from actors group by kind, status");
  return rows.map((r) => ({ ...r, n: Number(r.n) }));
}

/** The whole history of one actor, for replay. */
export async function loadHistory(db: Queryable, kind: string, id: string): Promise<{ snapshots: SnapshotRow[]; journal: JournalRow[] }> {
  const snapshots = await db.query<SnapshotRow>(
    "select seq, version, at, state from actor_snapshots where kind = $1 and actor_id = $2 order by seq", [kind, id]);
  const journal = await db.query<JournalRow>(
    "select seq, version, at, event from actor_journal where kind = $1 and actor_id = $2 order by seq", [kind, id]);
  return { snapshots, journal };
}
