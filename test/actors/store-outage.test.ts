import { expect, test } from "bun:test";
import { EventRejectedError, isStoreOutage } from "../../src/actors/errors.ts";
import { LeaseLostError } from "../../src/cluster/lease.ts";

const withCode = (code: string, message = "x") => Object.assign(new Error(message), { code });

test("a store outage is what a retry can cure: connections, resources, shutdown, serialization, the lease", () => {
  for (const err of [
    withCode("08006"), withCode("53300", "too many clients"), withCode("57P01", "terminating connection due to administrator command"),
    withCode("40001"), withCode("40P01"), withCode("ECONNREFUSED"), withCode("ECONNRESET"), withCode("CONNECTION_CLOSED"),
    new LeaseLostError("lease lost"), new Error("Connection terminated unexpectedly"), new Error("PGlite is closed"),
  ]) expect(isStoreOutage(err)).toBe(true);
});

test("not an outage, counted toward the restart budget: the actor's own errors, refused data or statements, a snapshot that does not serialize", () => {
  for (const err of [
    new EventRejectedError("counter/x" as never, "boom"), withCode("23505", "duplicate key"), withCode("22P02", "invalid input syntax"),
    withCode("42703", "column \"x\" does not exist"), withCode("XX000", "internal error"),
    new TypeError("JSON.stringify cannot serialize BigInt."), new Error("disk on fire"),
  ]) expect(isStoreOutage(err)).toBe(false);
});
