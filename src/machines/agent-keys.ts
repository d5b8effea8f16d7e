import { constantTimeEqual, displayPrefix, isSecret, newSecret, sha256Hex } from "../auth/secrets.ts";
import type { Queryable } from "../store/store.ts";
import { iso, isoOrNull } from "./rows.ts";

/**
 * Per-machine agent keys (M2): `cak_` + 64 hex, stored as SHA-256, shown once, each revocable
 * on its own. The agent plane only: the admin API refuses them (src/auth/credentials.ts).
 */
export interface AgentKeyRow {
  id: string;
  tenant_id: string;
  machine_id: string;
  prefix: string;
  created_at: Date | string;
  last_used_at: Date | string | null;
  revoked_at: Date | string | null;
}

const COLUMNS = "id, tenant_id, machine_id, prefix, created_at, last_used_at, revoked_at";

export function publicAgentKey(k: AgentKeyRow) {
  return { id: k.id, prefix: k.prefix, created_at: iso(k.created_at), last_used_at: isoOrNull(k.last_used_at), revoked_at: isoOrNull(k.revoked_at) };
}

/** Mints a key for a machine the caller has already checked; the plaintext is in the result only. */
export async function mintAgentKey(db: Queryable, tenantId: string, machineId: string, createdBy: string | null) {
  const key = newSecret("agentKey");
  const [row] = await db.query<AgentKeyRow>(
    `insert into agent_keys (id, tenant_id, machine_id, key_hash, prefix, created_by) values ($1, $2, $3, $4, $5, $6) returning ${COLUMNS}`,
    [crypto.randomUUID(), tenantId, machineId, sha256Hex(key), displayPrefix(key), createdBy]);
  return { id: row!.id, key, prefix: row!.prefix, created_at: iso(row!.created_at) };
}

export async function listAgentKeys(db: Queryable, tenantId: string, machineId: string): Promise<AgentKeyRow[]> {
  return db.query<AgentKeyRow>(`select ${COLUMNS} from agent_keys where tenant_id = $1 and machine_id = $2 order by created_at, id`, [tenantId, machineId]);
}

/** Revokes one key of one machine: null when that machine has no such key; `newly` false when it already was revoked. */
export async function revokeAgentKey(db: Queryable, tenantId: string, machineId: string, keyId: string): Promise<{ row: AgentKeyRow; newly: boolean } | null> {
  const [updated] = await db.query<AgentKeyRow>(
    `update agent_keys set revoked_at = now() where tenant_id = $1 and machine_id = $2 and id = $3 and revoked_at is null returning ${COLUMNS}`,
    [tenantId, machineId, keyId]);
  if (updated) return { row: updated, newly: true };
  const [existing] = await db.query<AgentKeyRow>(`select ${COLUMNS} from agent_keys where tenant_id = $1 and machine_id = $2 and id = $3`, [tenantId, machineId, keyId]);
  return existing ? { row: existing, newly: false } : null;
}

/** Revokes every live key of the given machines; returns how many. */
export async function revokeMachineKeys(db: Queryable, tenantId: string, machineIds: readonly string[]): Promise<number> {
  if (machineIds.length === 0) return 0;
  const rows = await db.query(
    `update agent_keys set revoked_at = now()
      where tenant_id = $1 and revoked_at is null and machine_id in (select jsonb_array_elements_text($2::text::jsonb)::uuid)
      returning id`,
    [tenantId, JSON.stringify(machineIds)]);
  return rows.length;
}

/**
 * The live key of `machineId` that `presentedKey` is, or null. Every live key of the machine is
 * compared by hash in constant time (no early exit on a match), and a match's `last_used_at` is
 * updated. A removed machine's keys never verify (removal revokes them as well). For the agent
 * WebSocket.
 */
export async function verifyAgentKey(db: Queryable, machineId: string, presentedKey: string): Promise<AgentKeyRow | null> {
  if (!isSecret("agentKey", presentedKey)) return null;
  const presentedHash = sha256Hex(presentedKey);
  const live = await db.query<AgentKeyRow & { key_hash: string }>(
    `select k.id, k.tenant_id, k.machine_id, k.prefix, k.created_at, k.last_used_at, k.revoked_at, k.key_hash
       from agent_keys k join machines m on m.id = k.machine_id and m.tenant_id = k.tenant_id
      where k.machine_id = $1 and k.revoked_at is null and m.deleted_at is null`,
    [machineId]);
  let match: (AgentKeyRow & { key_hash: string }) | null = null;
  for (const k of live) if (constantTimeEqual(presentedHash, k.key_hash)) match = k;
  if (!match) return null;
  const [touched] = await db.query<AgentKeyRow>(`update agent_keys set last_used_at = now() where id = $1 and revoked_at is null returning ${COLUMNS}`, [match.id]);
  return touched ?? null;
}
