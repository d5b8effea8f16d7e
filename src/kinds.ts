import type { KindDefinition } from "./actors/types.ts";

/**
 * The product's actor kinds, registered by the server and known to the replay tool.
 * Machines, sessions and rooms join this list as they are built.
 */
export const productKinds: KindDefinition[] = [];
