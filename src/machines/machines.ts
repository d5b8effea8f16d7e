import type { Principal } from "../auth/principal.ts";
import type { Queryable, Store } from "../store/store.ts";
import { revokeMachineKeys } from "./agent-keys.ts";
import { dropMachineGrants, granted } from "./grants.ts";
import { inventoryOf, iso, isoOrNull, labelsOf } from "./rows.ts";
import { type Cursor, decodeCursor, encodeCursor, type Order, QueryError, searchSql, type Sort } from "./search.ts";

/**
 * Machine rows (M6): listing (tenant-scoped; an end user sees only granted machines), removal
 * (soft delete that also revokes the machine's agent keys; re-enrollment revives the row),
 * disabling (the agent is kept out until enabled), and the admin's decision on a clone-looking
 * enrollment (approve or reject).
 */
export interface MachineRow {
  id: string;
  tenant_id: string;
  site_id: string | null;
  site_code: string | null;
  hostname: string;
  labels: unknown;
  enrollment_state: "active" | "pending";
  status: "online" | "offline";
  last_seen_at: Date | string | null;
  created_at: Date | string;
  inventory: unknown;
  external_ip: string | null;
  agent_version: string | null;
  disabled_at: Date | string | null;
}

export interface PendingRequestRow {
  id: string;
  hostname: string;
  labels: unknown;
  public_key: string;
  ip: string | null;
  created_at: Date | string;
}

/** Who is looking: an end user's view is narrowed to their grants. */
export type Viewer = Pick<Principal, "tenantId" | "userId" | "role">;

const COLUMNS = "m.id, m.tenant_id, m.site_id, s.site_code, m.hostname, m.labels, m.enrollment_state, p.status, p.last_seen_at, m.created_at, m.inventory, m.external_ip, m.agent_version, m.disabled_at";
/** A machine with its presence (one row each, schema v16) and its site's code. */
const FROM = "machines m join machine_presence p on p.machine_id = m.id left join sites s on s.id = m.site_id";
const SELECT = `select ${COLUMNS} from ${FROM}`;

/** Every visible-to-viewer condition, with the viewer's parameters at $1 (tenant), $2 (user), $3 (is end user). */
const VISIBLE = `m.tenant_id = $1 and m.deleted_at is null and (not $3::boolean or ${granted("$2::uuid", "m")})`;

export interface LiveSession {
  id: string;
  kind: "attended" | "unattended" | "end_user";
  technician: string;
  state: string;
  viewers: number;
}

/**
 * The sessions not yet ended on each of `machineIds` that the viewer may see (one query, on the
 * partial index of live sessions): an end user sees only their own, as in GET /api/sessions.
 */
export async function liveSessionsOf(db: Queryable, viewer: Viewer, machineIds: readonly string[]): Promise<Map<string, LiveSession[]>> {
  const out = new Map<string, LiveSession[]>();
  if (machineIds.length === 0) return out;
  const rows = await db.query<LiveSession & { machine_id: string }>(
    `select machine_id, id, kind, technician, state, viewers from sessions
      where tenant_id = $1 and ended_at is null and machine_id = any($2::uuid[])
        and (not $3::boolean or (kind = 'end_user' and created_by = $4::uuid)) order by created_at, id`,
    [viewer.tenantId, [...machineIds], viewer.role === "end_user", viewer.userId]);
  for (const { machine_id, ...s } of rows) {
    const list = out.get(machine_id);
    if (list) list.push(s);
    else out.set(machine_id, [s]);
  }
  return out;
}

/** The API's form of a machine, with who is connected to it now (`liveSessionsOf`). */
export function publicMachine(m: MachineRow, live: ReadonlyMap<string, LiveSession[]> = new Map()) {
  return {
    id: m.id,
    hostname: m.hostname,
    site_id: m.site_id,
    site_code: m.site_code,
    labels: labelsOf(m.labels),
    enrollment_state: m.enrollment_state,
    status: m.status,
    last_seen_at: isoOrNull(m.last_seen_at),
    created_at: iso(m.created_at),
    inventory: inventoryOf(m.inventory),
    external_ip: m.external_ip,
    agent_version: m.agent_version,
    disabled_at: isoOrNull(m.disabled_at),
    live_sessions: live.get(m.id) ?? [],
  };
}

export function publicPendingRequest(r: PendingRequestRow) {
  return { id: r.id, hostname: r.hostname, labels: labelsOf(r.labels), ip: r.ip, created_at: iso(r.created_at) };
}

export interface ListPage {
  limit: number;
  /** next_cursor of the previous page (opaque; belongs to one sort and order). */
  cursor?: string;
  q?: string;
  site_id?: string;
  status?: "online" | "offline";
  tag?: string;
  enrollment_state?: "active" | "pending";
  /** Default: hostname when `q` has terms, else created (enrollment order). */
  sort?: Sort;
  order?: Order;
}

/**
 * A page of the machines the viewer may see, searched and filtered (M5), in a stable order
 * (the sort key, then id). Throws QueryError on a `q` or cursor it cannot use.
 */
export async function listMachines(db: Queryable, viewer: Viewer, page: ListPage): Promise<{ machines: MachineRow[]; next_cursor: string | null }> {
  const sort: Sort = page.sort ?? (page.q?.trim() ? "hostname" : "created");
  const order: Order = page.order ?? "asc";
  let cursor: Cursor | undefined;
  if (page.cursor !== undefined) {
    const c = decodeCursor(page.cursor);
    if (!c) throw new QueryError("cursor: not a cursor of this list");
    if (c.sort !== sort || c.order !== order) throw new QueryError("cursor: belongs to another sort or order");
    cursor = c;
  }
  const s = searchSql({ ...page, sort, order, cursor }, [viewer.tenantId, viewer.userId, viewer.role === "end_user"]);
  const rows = await db.query<MachineRow & { sort_key: string }>(
    `select ${COLUMNS}, ${s.keySelect}
       from ${FROM} where ${VISIBLE}${s.where}${s.order}`,
    s.params);
  const machines = rows.slice(0, page.limit);
  const last = machines[machines.length - 1];
  return {
    machines,
    next_cursor: rows.length > page.limit && last ? encodeCursor({ sort, order, key: last.sort_key, id: last.id }) : null,
  };
}

export async function getMachine(db: Queryable, viewer: Viewer, id: string): Promise<MachineRow | null> {
  const [row] = await db.query<MachineRow>(`${SELECT} where ${VISIBLE} and m.id = $4`, [viewer.tenantId, viewer.userId, viewer.role === "end_user", id]);
  return row ?? null;
}

export async function pendingRequest(db: Queryable, tenantId: string, machineId: string): Promise<PendingRequestRow | null> {
  const [row] = await db.query<PendingRequestRow>(
    "select id, hostname, labels, public_key, ip, created_at from enrollment_requests where tenant_id = $1 and machine_id = $2 and status = 'pending'",
    [tenantId, machineId]);
  return row ?? null;
}

export interface RemovedMachine {
  id: string;
  hostname: string;
  machine_uid: string;
  /** The end users whose grant to it was taken back with it. */
  grantees: string[];
}

/**
 * A clone-looking claim waiting on a removed machine can no longer be decided (approve and
 * reject need a live machine): dropped, with the machines' pending state, or it would hold a
 * machine 'pending' for good and queue its next enrollment instead of reviving it. The claim
 * stays in the audit log. Run at removal, and again when a removed machine re-enrolls (a row
 * removed before removal did this may still hold one).
 */
export async function releasePendingClaims(tx: Queryable, tenantId: string, machineIds: readonly string[]): Promise<void> {
  if (machineIds.length === 0) return;
  const ids = JSON.stringify(machineIds);
  await tx.query(
    `delete from enrollment_requests where tenant_id = $1 and status = 'pending'
      and machine_id in (select jsonb_array_elements_text($2::text::jsonb)::uuid)`, [tenantId, ids]);
  await tx.query(
    `update machines set enrollment_state = 'active'
      where tenant_id = $1 and enrollment_state <> 'active' and id in (select jsonb_array_elements_text($2::text::jsonb)::uuid)`, [tenantId, ids]);
}

/**
 * Soft-deletes the live machines among `ids` in one transaction, revokes their agent keys and
 * takes back their grants. Ids that are unknown, of another tenant, or already removed are left
 * out of the result.
 */
export async function removeMachines(store: Store, tenantId: string, ids: readonly string[]): Promise<RemovedMachine[]> {
  return store.transaction(async (tx) => {
    const removed = await tx.query<Omit<RemovedMachine, "grantees">>(
      `update machines set deleted_at = now(), updated_at = now()
        where tenant_id = $1 and deleted_at is null and id in (select jsonb_array_elements_text($2::text::jsonb)::uuid)
        returning id, hostname, machine_uid`,
      [tenantId, JSON.stringify([...new Set(ids)])]);
    const removedIds = removed.map((r) => r.id);
    await revokeMachineKeys(tx, tenantId, removedIds);
    await releasePendingClaims(tx, tenantId, removedIds);
    const dropped = await dropMachineGrants(tx, tenantId, removedIds);
    return removed.map((m) => ({ ...m, grantees: dropped.filter((g) => g.machine_id === m.id).map((g) => g.user_id) }));
  });
}

/**
 * Disables or enables a live machine of the tenant. `changed` is false when it already was so
 * (the call is idempotent; only a change is audited). Null: no such machine.
 */
export async function setMachineDisabled(db: Queryable, tenantId: string, machineId: string, disabled: boolean): Promise<{ machine: MachineRow; changed: boolean } | null> {
  const [changed] = await db.query<{ id: string }>(
    `update machines set disabled_at = case when $3::boolean then now() else null end, updated_at = now()
      where tenant_id = $1 and id = $2 and deleted_at is null and (disabled_at is not null) <> $3::boolean
      returning id`,
    [tenantId, machineId, disabled]);
  const [machine] = await db.query<MachineRow>(`${SELECT} where m.tenant_id = $1 and m.id = $2 and m.deleted_at is null`, [tenantId, machineId]);
  return machine ? { machine, changed: changed !== undefined } : null;
}

export type Decision =
  | { ok: true; machine: MachineRow; request: PendingRequestRow; revokedKeys: number }
  | { ok: false; reason: "machine_not_found" | "no_pending_request" };

/**
 * Approve: the claimant's hostname, labels and public key become the machine's and it is
 * active again. The earlier agent's keys are revoked, since the identity they were issued to
 * is no longer the machine's; the claimant's next enroll is an ordinary reuse and gets a key.
 * Reject: the request is closed, the machine is active again, the existing agent keeps its
 * keys, and the rejected public key is refused for this machine from then on.
 */
export async function decidePending(store: Store, tenantId: string, machineId: string, decision: "approve" | "reject", by: string): Promise<Decision> {
  return store.transaction(async (tx) => {
    const [m] = await tx.query<{ id: string }>("select id from machines where tenant_id = $1 and id = $2 and deleted_at is null for update", [tenantId, machineId]);
    if (!m) return { ok: false, reason: "machine_not_found" } as const;
    const [request] = await tx.query<PendingRequestRow>(
      `update enrollment_requests set status = $3, decided_at = now(), decided_by = $4
        where tenant_id = $1 and machine_id = $2 and status = 'pending'
        returning id, hostname, labels, public_key, ip, created_at`,
      [tenantId, machineId, decision === "approve" ? "approved" : "rejected", by]);
    if (!request) return { ok: false, reason: "no_pending_request" } as const;
    let revokedKeys = 0;
    if (decision === "approve") {
      await tx.query(
        `update machines set hostname = $3, labels = $4::text::jsonb, public_key = $5, enrollment_state = 'active', updated_at = now()
          where tenant_id = $1 and id = $2`,
        [tenantId, machineId, request.hostname, JSON.stringify(labelsOf(request.labels)), request.public_key]);
      revokedKeys = await revokeMachineKeys(tx, tenantId, [machineId]);
    } else {
      await tx.query("update machines set enrollment_state = 'active', updated_at = now() where tenant_id = $1 and id = $2", [tenantId, machineId]);
    }
    const [machine] = await tx.query<MachineRow>(`${SELECT} where m.tenant_id = $1 and m.id = $2`, [tenantId, machineId]);
    return { ok: true, machine: machine!, request, revokedKeys } as const;
  });
}
