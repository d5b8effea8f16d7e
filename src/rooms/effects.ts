import type { Serial } from "../actors/serial.ts";
import type { Effect } from "../actors/types.ts";
import { audit } from "../audit/audit.ts";
import type { Store } from "../store/store.ts";
import type { RoomHub } from "./hub.ts";
import { projectRoom, storeSealedKeys } from "./rooms.ts";

type Fields<T> = Effect & T;

/**
 * The room actor's effects, run once the event is durable: rows written in event order per
 * room (`writes`), the audit log, and the hub told who may still listen.
 */
export function roomEffects(db: Store, hub: RoomHub, writes: Serial) {
  return {
    "room.project": (e: Effect) => {
      const p = e as Fields<Parameters<typeof projectRoom>[1]>;
      return writes.run(p.room_id, () => projectRoom(db, p));
    },
    "room.keys": (e: Effect) => {
      const p = e as Fields<{ room_id: string; epoch: number; sealed: Record<string, string> }>;
      return writes.run(p.room_id, () => storeSealedKeys(db, p.room_id, p.epoch, p.sealed));
    },
    "room.members": (e: Effect) => {
      const p = e as Fields<{ room_id: string; members: string[]; epoch: number; keyed_epoch: number }>;
      hub.membersChanged(p.room_id, p.members, { epoch: p.epoch, keyed_epoch: p.keyed_epoch });
    },
    "room.event": (e: Effect) => {
      const p = e as Fields<{ room_id: string; tenant_id: string; event: string; by: string | null; details: Record<string, unknown> }>;
      return writes.run(p.room_id, () => audit(db, {
        tenantId: p.tenant_id, type: p.event,
        actor: p.by ? { type: "user", id: p.by } : { type: "system" },
        target: { type: "room", id: p.room_id }, details: p.details,
      }));
    },
  };
}

