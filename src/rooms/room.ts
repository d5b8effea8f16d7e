import { emit, enqueueActions, setup } from "xstate";
import { effect } from "../actors/effects.ts";
import type { Effect, KindDefinition } from "../actors/types.ts";
import { MAX_MEMBERS, type RoomPolicy } from "../protocol/rooms.ts";

/**
 * A chat room (SPEC R1), one actor per room: `room/<id>`. It owns the room's name, policy,
 * members and, for an encrypted room, the key epoch. Messages are not its events: they are
 * written in order by the message log and fanned out by the hub (src/rooms), which this actor
 * keeps told who may listen. Effects:
 *   room.project  the rooms and room_members rows
 *   room.keys     sealed room keys to store (the server cannot open them)
 *   room.event    an audited room event
 *   room.members  the hub's view of members and epoch; removed members' streams are closed
 */
export type MemberRole = "owner" | "member";
export interface MemberEntry {
  user_id: string | null;
  name: string;
  role: MemberRole;
  since: number;
}
export interface RoomContext {
  id: string;
  tenantId: string | null;
  name: string;
  kind: "team" | "session" | null;
  policy: RoomPolicy;
  /** Encrypted rooms: the epoch new messages must use, and the newest epoch with stored keys. */
  epoch: number;
  keyedEpoch: number;
  members: Record<string, MemberEntry>;
  /** Who was removed (and when) and not added back since: a session's chat does not re-add them. */
  removed?: Record<string, number>;
  createdBy: string | null;
  createdAt: number | null;
}

export interface NewMember {
  member: string;
  user_id: string | null;
  name: string;
  role: MemberRole;
}

type At = { at: number };
export type RoomEvent =
  | ({ type: "room.create"; tenant_id: string; name: string; kind: "team" | "session"; policy: RoomPolicy; created_by: string | null; members: NewMember[] } & At)
  | ({ type: "member.add"; by: string | null; sealed?: string; unless_removed?: boolean } & NewMember & At)
  | ({ type: "member.remove"; member: string; by: string | null } & At)
  | ({ type: "keys.set"; epoch: number; sealed: Record<string, string>; by: string | null } & At);

type Ev<T extends RoomEvent["type"]> = Extract<RoomEvent, { type: T }>;

export const roomEffects = {
  project: (c: RoomContext): Effect => ({
    type: "room.project", room_id: c.id, tenant_id: c.tenantId, name: c.name, kind: c.kind, policy: c.policy,
    epoch: c.epoch, keyed_epoch: c.keyedEpoch, created_by: c.createdBy, created_at: c.createdAt, members: c.members,
  }),
  members: (c: RoomContext): Effect => ({ type: "room.members", room_id: c.id, members: Object.keys(c.members), epoch: c.epoch, keyed_epoch: c.keyedEpoch }),
  event: (c: RoomContext, event: string, at: number, by: string | null, details: Record<string, unknown>): Effect =>
    ({ type: "room.event", room_id: c.id, tenant_id: c.tenantId, event, by, details, at }),
  keys: (c: RoomContext, epoch: number, sealed: Record<string, string>): Effect => ({ type: "room.keys", room_id: c.id, epoch, sealed }),
};

const fail = (code: string) => effect.reply({ ok: false, code });
const ownerCount = (members: Record<string, MemberEntry>) => Object.values(members).filter((m) => m.role === "owner").length;

export const roomLogic = setup({
  types: {} as { context: RoomContext; events: RoomEvent; input: { id: string } },
}).createMachine({
  id: "room",
  context: ({ input }) => ({
    id: input.id, tenantId: null, name: "", kind: null, policy: { persist: true, sign: false, encrypt: false },
    epoch: 1, keyedEpoch: 0, members: {}, createdBy: null, createdAt: null,
  }),
  initial: "new",
  states: {
    new: {
      on: {
        "room.create": {
          target: "open",
          actions: enqueueActions(({ enqueue, event: e }) => {
            const ev = e as Ev<"room.create">;
            const members: Record<string, MemberEntry> = {};
            for (const m of ev.members.slice(0, MAX_MEMBERS)) members[m.member] = { user_id: m.user_id, name: m.name, role: m.role, since: ev.at };
            enqueue.assign({ tenantId: ev.tenant_id, name: ev.name, kind: ev.kind, policy: ev.policy, createdBy: ev.created_by, createdAt: ev.at, members });
            enqueue.emit(({ context }) => roomEffects.project(context) as never);
            enqueue.emit(({ context }) => roomEffects.members(context) as never);
            enqueue.emit(({ context }) => roomEffects.event(context, "room.created", ev.at, ev.created_by, { name: ev.name, kind: ev.kind, ...ev.policy, members: ev.members.length }) as never);
            enqueue.emit(() => effect.reply({ ok: true }) as never);
          }),
        },
        "*": { actions: emit(() => fail("ROOM_NOT_FOUND") as never) },
      },
    },
    open: {
      on: {
        // Creating again (a retried request, a session's room) is answered, not repeated.
        "room.create": { actions: emit(() => effect.reply({ ok: true, existed: true }) as never) },
        "member.add": {
          actions: enqueueActions(({ enqueue, context: c, event: e }) => {
            const ev = e as Ev<"member.add">;
            const existing = c.members[ev.member];
            if (existing) {
              enqueue.emit(() => effect.reply({ ok: true, existed: true }) as never);
              return;
            }
            // A session's chat adds a poster whose join is still being written, never one removed.
            if (ev.unless_removed && c.removed?.[ev.member] !== undefined) return void enqueue.emit(() => fail("NOT_A_MEMBER") as never);
            if (Object.keys(c.members).length >= MAX_MEMBERS) return void enqueue.emit(() => fail("ROOM_FULL") as never);
            // With the current epoch's key already shared, a newcomer needs their own sealed copy.
            const needsKey = c.policy.encrypt && c.keyedEpoch === c.epoch;
            if (needsKey && !ev.sealed) return void enqueue.emit(() => fail("SEALED_KEY_REQUIRED") as never);
            enqueue.assign({ members: { ...c.members, [ev.member]: { user_id: ev.user_id, name: ev.name, role: ev.role, since: ev.at } } });
            if (c.removed?.[ev.member] !== undefined) {
              const { [ev.member]: _back, ...removed } = c.removed;
              enqueue.assign({ removed });
            }
            if (needsKey) enqueue.emit(() => roomEffects.keys(c, c.epoch, { [ev.member]: ev.sealed! }) as never);
            enqueue.emit(({ context }) => roomEffects.project(context) as never);
            enqueue.emit(({ context }) => roomEffects.members(context) as never);
            enqueue.emit(({ context }) => roomEffects.event(context, "room.member_added", ev.at, ev.by, { member: ev.member, role: ev.role }) as never);
            enqueue.emit(() => effect.reply({ ok: true }) as never);
          }),
        },
        "member.remove": {
          actions: enqueueActions(({ enqueue, context: c, event: e }) => {
            const ev = e as Ev<"member.remove">;
            const gone = c.members[ev.member];
            if (!gone) return void enqueue.emit(() => fail("NOT_A_MEMBER") as never);
            // A removal by the system (`by: null`: an end user losing a machine's grant) is not a
            // leave: it may take a room's last owner, leaving the room with none.
            if (ev.by !== null && gone.role === "owner" && ownerCount(c.members) === 1 && Object.keys(c.members).length > 1)
              return void enqueue.emit(() => fail("LAST_OWNER") as never);
            const members = Object.fromEntries(Object.entries(c.members).filter(([k]) => k !== ev.member));
            // An encrypted room moves to a new epoch: the removed member never gets its key.
            const epoch = c.policy.encrypt ? c.epoch + 1 : c.epoch;
            enqueue.assign({ members, epoch, removed: { ...c.removed, [ev.member]: ev.at } });
            enqueue.emit(({ context }) => roomEffects.project(context) as never);
            enqueue.emit(({ context }) => roomEffects.members(context) as never);
            enqueue.emit(({ context }) => roomEffects.event(context, "room.member_removed", ev.at, ev.by, { member: ev.member, epoch: context.epoch }) as never);
            enqueue.emit(({ context }) => effect.reply({ ok: true, epoch: context.epoch }) as never);
          }),
        },
        "keys.set": {
          actions: enqueueActions(({ enqueue, context: c, event: e }) => {
            const ev = e as Ev<"keys.set">;
            if (!c.policy.encrypt) return void enqueue.emit(() => fail("ROOM_NOT_ENCRYPTED") as never);
            if (ev.epoch !== c.epoch) return void enqueue.emit(() => fail("WRONG_EPOCH") as never);
            if (c.keyedEpoch === c.epoch) return void enqueue.emit(() => fail("EPOCH_ALREADY_KEYED") as never);
            const want = Object.keys(c.members).sort();
            const got = Object.keys(ev.sealed).sort();
            if (want.length !== got.length || want.some((m, i) => m !== got[i])) return void enqueue.emit(() => fail("KEYS_MUST_COVER_MEMBERS") as never);
            enqueue.assign({ keyedEpoch: ev.epoch });
            enqueue.emit(() => roomEffects.keys(c, ev.epoch, ev.sealed) as never);
            enqueue.emit(({ context }) => roomEffects.project(context) as never);
            enqueue.emit(({ context }) => roomEffects.members(context) as never);
            enqueue.emit(({ context }) => roomEffects.event(context, "room.key_rotated", ev.at, ev.by, { epoch: ev.epoch, members: got.length }) as never);
            enqueue.emit(() => effect.reply({ ok: true }) as never);
          }),
        },
      },
    },
  },
});

export type RoomEffects = Record<string, (effect: Effect) => void | Promise<void>>;

export const roomKind = (effects: RoomEffects = {}): KindDefinition => ({
  kind: "room",
  logic: roomLogic,
  // 2: the context remembers removals (`removed`, optional), so version 1's snapshots load as they are.
  version: 2,
  migrations: { 1: (snapshot) => snapshot },
  input: (id) => ({ id }),
  effects,
  options: { snapshotEvery: 50 },
});
