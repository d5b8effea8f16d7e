import { Elysia } from "elysia";
import { unstorableAt } from "../protocol/storable.ts";
import { HttpError } from "./errors.ts";

/** Deeper than any body of the API (a few levels): refused before validation, see below. */
export const MAX_INPUT_DEPTH = 32;

/**
 * Every request's body, query and path parameters are refused with 400 if any string in them is
 * text the database cannot store (src/protocol/storable.ts), before validation and handlers:
 * otherwise it would fail as a 500 at the insert, or fail a journal commit shared with other
 * actors' events. Likewise input nested deeper than MAX_INPUT_DEPTH: Elysia's validation error
 * pretty-prints the whole value it refused, which takes time quadratic in the depth (seconds of
 * the event loop for a 150 KB body) and overflows the stack (a 500) beyond some 100,000 levels.
 */
export const storableInput = () =>
  new Elysia({ name: "storable-input" }).onTransform({ as: "global" }, ({ body, query, params }) => {
    // Named, not looked up by key: Elysia reads which inputs a hook uses from its source, and
    // parses only those.
    const inputs = { body, query, params };
    for (const where of ["body", "query", "params"] as const) {
      if (deeperThan(inputs[where], MAX_INPUT_DEPTH)) throw new HttpError(400, "VALIDATION_FAILED", `${where}: nested deeper than ${MAX_INPUT_DEPTH} levels`);
      const at = unstorableAt(inputs[where]);
      if (at !== null) {
        throw new HttpError(400, "VALIDATION_FAILED", `${at ? `${where}.${at}` : where}: text must not contain NUL characters or unpaired surrogates`);
      }
    }
  });

/** Whether arrays and plain objects in `value` nest more than `max` levels (with a stack of its own). */
function deeperThan(value: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 0]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (typeof v !== "object" || v === null || ArrayBuffer.isView(v) || v instanceof ArrayBuffer || v instanceof Blob) continue;
    if (depth === max) return true;
    for (const child of Array.isArray(v) ? v : Object.values(v)) stack.push([child, depth + 1]);
  }
  return false;
}
