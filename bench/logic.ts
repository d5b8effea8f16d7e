import { assign, emit, setup } from "xstate";
import { effect } from "../src/actors/effects.ts";
import type { KindDefinition } from "../src/actors/types.ts";

/**
 * The benchmark's logic: a counter whose `add` updates the context and emits a reply, the
 * common shape of a request handled by an actor. Bare XState runs the very same machine.
 */
export interface BenchContext {
  count: number;
}
export type BenchEvent = { type: "add"; n: number; at?: number };

export const benchLogic = setup({
  types: {} as { context: BenchContext; events: BenchEvent; input: { id: string } },
}).createMachine({
  id: "bench",
  context: () => ({ count: 0 }),
  initial: "open",
  states: {
    open: {
      on: {
        add: {
          actions: [
            assign({ count: ({ context, event }) => context.count + event.n }),
            emit(({ context }) => effect.reply(context.count) as never),
          ],
        },
      },
    },
  },
});

export const benchKind = (kind: string, options: KindDefinition["options"] = {}): KindDefinition => ({
  kind,
  logic: benchLogic,
  version: 1,
  input: (id) => ({ id }),
  options,
});
