import { assign, emit, setup } from "xstate";
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
 * The presence projection: what lists and search read from the machines table. It carries the
 * context's own inventory object, which the actor keeps when an equal inventory arrives (see
 * `keptInventory`): the writer (src/machines/presence.ts) leaves out details it wrote already
 * by comparing that object's identity, and a reconnect storm is mostly agents coming back
 * unchanged.
 */
const projection = (status: "online" | "offline", context: MachineContext, at: number) => ({
  type: "machine.project",
  machine_id: context.id,
  status,
  last_seen: status === "online" ? at : context.lastSeen,
  inventory: context.inventory,
  external_ip: context.externalIp,
  agent_version: context.agentVersion,
});

/**
 * The inventory after an event that reports one: the one the machine has if they are equal, so
 * an unchanged inventory keeps its identity (the projection writer relies on it), and the copy
 * the event brought is dropped rather than kept alive. A new one is kept as a deep copy with
 * strings of its own: decoded from an agent's frame, its short strings are slices of one string
 * made from the whole frame (msgpackr), which the context would otherwise keep alive. Copied
 * here, not as frames arrive: a reconnect storm's inventories are mostly unchanged.
 */
const keptInventory = (context: MachineContext, reported: Inventory | undefined): Inventory =>
  reported === undefined || Bun.deepEquals(reported, context.inventory) ? context.inventory : (JSON.parse(JSON.stringify(reported)) as Inventory);

const isCurrent = ({ context, event }: { context: MachineContext; event: MachineEvent }) =>
  "conn" in event && context.connection?.id === event.conn;

export const machineLogic = setup({
  types: {} as { context: MachineContext; events: MachineEvent; input: { id: string } },
  guards: { isCurrent },
  actions: {
    projectOnline: emit(({ context, event }) => projection("online", context, event.at) as never),
    projectOffline: emit(({ context, event }) => projection("offline", context, event.at) as never),
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
        assign({
          connection: ({ event }) => ({ id: event.conn, since: event.at, ip: event.ip }),
          lastSeen: ({ event }) => event.at,
          externalIp: ({ event }) => event.ip,
          agentVersion: ({ event }) => event.agent_version,
          // Sent with the proof (docs/PROTOCOL.md); older agents send it in a status after.
          inventory: ({ context, event }) => keptInventory(context, event.inventory),
        }),
        "projectOnline",
      ],
    },
  },
  states: {
    offline: {
      on: {
        "agent.status": { guard: "isCurrent", actions: assign({ inventory: ({ context, event }) => keptInventory(context, event.inventory) }) },
        // The server lists machines its table shows online; a disconnect whose projection was
        // lost with the process left this one there.
        "server.restarted": { actions: "projectOffline" },
      },
    },
    online: {
      on: {
        "agent.status": {
          guard: "isCurrent",
          actions: [assign({ inventory: ({ context, event }) => keptInventory(context, event.inventory), lastSeen: ({ event }) => event.at }), "projectOnline"],
        },
        "agent.disconnected": {
          guard: "isCurrent",
          target: "offline",
          actions: [assign({ connection: null, lastSeen: ({ event }) => event.at }), "projectOffline"],
        },
        "server.restarted": { target: "offline", actions: [assign({ connection: null }), "projectOffline"] },
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
