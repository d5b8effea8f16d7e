import { Elysia } from "elysia";
import { unstorableAt } from "../protocol/storable.ts";
import { HttpError } from "./errors.ts";

/**
 * Every request's body, query and path parameters are refused with 400 if any string in them is
 * text the database cannot store (src/protocol/storable.ts), before validation and handlers:
 * otherwise it would fail as a 500 at the insert, or fail a journal commit shared with other
 * actors' events.
 */
export const storableInput = () =>
  new Elysia({ name: "storable-input" }).onTransform({ as: "global" }, ({ body, query, params }) => {
    // Named, not looked up by key: Elysia reads which inputs a hook uses from its source, and
    // parses only those.
    const inputs = { body, query, params };
    for (const where of ["body", "query", "params"] as const) {
      const at = unstorableAt(inputs[where]);
      if (at !== null) {
        throw new HttpError(400, "VALIDATION_FAILED", `${at ? `${where}.${at}` : where}: text must not contain NUL characters or unpaired surrogates`);
      }
    }
  });
