import { machineKind } from "./actors/machine.ts";
import type { KindDefinition } from "./actors/types.ts";

/**
 * The product's actor kinds as the replay tool knows them (logic only; the server registers
 * them with their effect handlers). Sessions and rooms join this list as they are built.
 */
export const productKinds: KindDefinition[] = [machineKind()];
