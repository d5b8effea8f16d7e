import { assign, emit, enqueueActions, setup } from "xstate";
import type { Inventory } from "../protocol/agent.ts";
import type { Effect, KindDefinition } from "./types.ts";

/**
 * A managed machine (SPEC M4): presence and inventory. One live agent connection at a time;
 * a new one supersedes the old (no ghosts). Heartbeats stay at the connection edge (they would
 * flood the journal); the connection layer reports a silent agent as a disconnect. Effects:
 * `machine.project` (write presence and inventory to the machines table, for lists and
 * search) and `machine.close` (close a superseded connection).
 */
export interface MachineContext {
  id: string;
  connection: { id: string; since: number; ip: string } | null;
  lastSeen: number | null;
  inventory: Inventory;
  externalIp: string | null;
  agentVersion: string | null;
}

type At = { at: number };
export type MachineEvent =
  | ({ type: "agent.connected"; conn: string; ip: string; agent_version: string; inventory?: Inventory } & At)
  | ({ type: "agent.status"; conn: string; inventory: Inventory } & At)
  | ({ type: "agent.disconnected"; conn: string; reason: string } & At)
  | ({ type: "server.restarted" } & At);

/**
 * The presence projection: what lists and search read from the machines table. `details` is
 * false when the inventory, external IP and agent version are those of the previous
 * projection; the writer may then update status and last seen only, which costs the database
 * a third of a full update (src/machines/presence.ts says when it does). A reconnect storm is
 * mostly agents coming back unchanged.
 */
const projection = (status: "online" | "offline", context: MachineContext, at: number, details: boolean) => ({
  type: "machine.project",
  machine_id: context.id,
  status,
  last_seen: status === "online" ? at : context.lastSeen,
  inventory: context.inventory,
  external_ip: context.externalIp,
  agent_version: context.agentVersion,
  details,
});

/** Whether an event leaves the inventory, external IP and agent version as they were. */
function sameDetails(context: MachineContext, event: MachineEvent): boolean {
  switch (event.type) {
    case "agent.connected":
      return event.ip === context.externalIp && event.agent_version === context.agentVersion
        && (event.inventory === undefined || Bun.deepEquals(event.inventory, context.inventory));
    case "agent.status":
      return Bun.deepEquals(event.inventory, context.inventory);
    default:
      return true;
  }
}

const isCurrent = ({ context, event }: { context: MachineContext; event: MachineEvent }) =>
  "conn" in event && context.connection?.id === event.conn;

export const machineLogic = setup({
  types: {} as { context: MachineContext; events: MachineEvent; input: { id: string } },
  guards: { isCurrent },
  actions: {
    // `details` is decided from the context before the event's assigns, the projection after them.
    projectOnline: emit(({ context, event }, params: { details: boolean }) => projection("online", context, event.at, params.details) as never),
    projectOffline: emit(({ context, event }, params: { details: boolean }) => projection("offline", context, event.at, params.details) as never),
  },
}).createMachine({
  id: "machine",
  context: ({ input }) => ({ id: input.id, connection: null, lastSeen: null, inventory: {}, externalIp: null, agentVersion: null }),
  initial: "offline",
  on: {
    "agent.connected": {
      target: ".online",
      actions: [
        // The connection it replaces, if any, is closed: one agent per machine.
        emit(({ context }) => (context.connection ? { type: "machine.close", conn: context.connection.id, reason: "superseded" } : { type: "machine.noop" }) as never),
        enqueueActions(({ context, event, enqueue }) => {
          if (event.type !== "agent.connected") return;
          const details = !sameDetails(context, event);
          enqueue.assign({
            connection: { id: event.conn, since: event.at, ip: event.ip },
            lastSeen: event.at,
            externalIp: event.ip,
            agentVersion: event.agent_version,
            // Sent with the proof (docs/PROTOCOL.md); older agents send it in a status after.
            inventory: event.inventory ?? context.inventory,
          });
          enqueue({ type: "projectOnline", params: { details } });
        }),
      ],
    },
  },
  states: {
    offline: {
      on: {
        "agent.status": { guard: "isCurrent", actions: assign({ inventory: ({ event }) => event.inventory }) },
        // The server lists machines its table shows online; a disconnect whose projection was
        // lost with the process left this one there.
        "server.restarted": { actions: { type: "projectOffline", params: { details: true } } },
      },
    },
    online: {
      on: {
        "agent.status": {
          guard: "isCurrent",
          actions: enqueueActions(({ context, event, enqueue }) => {
            if (event.type !== "agent.status") return;
            const details = !sameDetails(context, event);
            enqueue.assign({ inventory: event.inventory, lastSeen: event.at });
            enqueue({ type: "projectOnline", params: { details } });
          }),
        },
        "agent.disconnected": {
          guard: "isCurrent",
          target: "offline",
          actions: [assign({ connection: null, lastSeen: ({ event }) => event.at }), { type: "projectOffline", params: { details: false } }],
        },
        // In full: a projection lost with the process may have left the row behind.
        "server.restarted": { target: "offline", actions: [assign({ connection: null }), { type: "projectOffline", params: { details: true } }] },
      },
    },
  },
});

export type MachineEffects = Record<string, (effect: Effect) => void | Promise<void>>;

/** The machine kind; the server passes effect handlers, the replay tool needs only the logic. */
export const machineKind = (effects: MachineEffects = {}): KindDefinition => ({
  kind: "machine",
  logic: machineLogic,
  version: 1,
  input: (id) => ({ id }),
  effects: { "machine.noop": () => {}, ...effects },
  // A connected machine is pinned; an idle offline one may leave memory.
  options: { snapshotEvery: 50 },
});
