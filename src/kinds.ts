import { machineKind } from "./actors/machine.ts";
import type { KindDefinition } from "./actors/types.ts";
import { roomKind } from "./rooms/room.ts";
import { sessionKind } from "./sessions/session.ts";

/**
 * The product's actor kinds as the replay tool knows them (logic only; the server registers
 * them with their effect handlers).
 */
export const productKinds: KindDefinition[] = [machineKind(), sessionKind(), roomKind()];
