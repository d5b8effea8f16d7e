import { Serial } from "../actors/serial.ts";
import type { Effect } from "../actors/types.ts";
import type { AgentConnections } from "../http/ws/agent-connections.ts";
import type { Logger } from "../log.ts";
import { CLOSE } from "../protocol/agent.ts";
import type { Queryable } from "../store/store.ts";

/**
 * The machine actor's effects: its presence and inventory projected onto the machines table
 * (which lists and search read), and superseded connections closed.
 */
export function machineEffects(db: Queryable, connections: AgentConnections, log: Logger, writes = new Serial()) {
  return {
    // In event order per machine: a quick online → offline must not land as online.
    "machine.project": (e: Effect) => writes.run(String((e as Record<string, unknown>).machine_id), async () => {
      const p = e as Effect & { machine_id: string; status: string; last_seen: number | null; inventory: unknown; external_ip: string | null; agent_version: string | null };
      await db.query(
        `update machines set status = $2, last_seen_at = case when $3::bigint is null then last_seen_at else to_timestamp($3::bigint / 1000.0) end,
                inventory = $4::text::jsonb, external_ip = $5, agent_version = $6, updated_at = now()
          where id = $1`,
        [p.machine_id, p.status, p.last_seen, JSON.stringify(p.inventory ?? {}), p.external_ip, p.agent_version]);
    }),
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
