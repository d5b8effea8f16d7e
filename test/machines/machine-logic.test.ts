import { describe, expect, test } from "bun:test";
import type { AnyMachineSnapshot } from "xstate";
import { machineLogic } from "../../src/actors/machine.ts";
import { Stepper } from "../../src/actors/step.ts";
import type { ActorEvent, Effect } from "../../src/actors/types.ts";

/** The machine actor's projections: the inventory keeps its identity while it is unchanged (src/machines/presence.ts relies on it). */
describe("machine actor projections", () => {
  const stepper = new Stepper(machineLogic);
  const inventory = () => ({ hostname: "box-1", users: ["alice"], os: { name: "Debian", version: "12" }, elevated: false });
  let snapshot: AnyMachineSnapshot;
  let at = 1_700_000_000_000;
  /** The projection the event emitted, if any. */
  const step = (event: ActorEvent): (Effect & { status: string; inventory: unknown; external_ip: string; agent_version: string }) | undefined => {
    const r = stepper.step(snapshot, { ...event, at: ++at });
    snapshot = r.snapshot;
    return r.effects.find((e) => e.type === "machine.project") as never;
  };
  const connect = (conn: string, extra: Record<string, unknown> = {}) =>
    step({ type: "agent.connected", conn, ip: "10.0.0.1", agent_version: "1.0.0", inventory: inventory(), ...extra });

  test("an equal inventory keeps the object the machine has; a different one replaces it", () => {
    snapshot = stepper.initial({ id: "m-1" }).snapshot;
    const first = connect("c1")!;
    expect(first).toMatchObject({ status: "online", inventory: inventory() });
    expect(step({ type: "agent.disconnected", conn: "c1", reason: "1006" })!.inventory).toBe(first.inventory);
    // Equal, not the same object: what a reconnecting agent sends.
    expect(connect("c2")!.inventory).toBe(first.inventory);
    expect(step({ type: "agent.status", conn: "c2", inventory: inventory() })!.inventory).toBe(first.inventory);
    const changed = step({ type: "agent.status", conn: "c2", inventory: { ...inventory(), users: ["bob"] } })!;
    expect(changed.inventory).not.toBe(first.inventory);
    expect(changed.inventory).toMatchObject({ users: ["bob"] });
    expect(connect("c3", { ip: "10.0.0.2", agent_version: "1.1.0", inventory: { ...inventory(), users: ["bob"] } })).toMatchObject({ external_ip: "10.0.0.2", agent_version: "1.1.0" });
    expect(snapshot.context.inventory).toBe(changed.inventory);
    // An agent that sends its inventory in a status after the welcome: the connect keeps the last one.
    expect(connect("c4", { inventory: undefined })!.inventory).toBe(changed.inventory);
  });

  test("a server restart projects offline, whether the actor was online or not", () => {
    snapshot = stepper.initial({ id: "m-2" }).snapshot;
    connect("c1");
    expect(step({ type: "server.restarted" })).toMatchObject({ status: "offline", inventory: inventory() });
    // Offline already (its disconnect's projection may have been lost with the process).
    expect(step({ type: "server.restarted" })).toMatchObject({ status: "offline" });
  });
});
