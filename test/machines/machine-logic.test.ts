import { describe, expect, test } from "bun:test";
import type { AnyMachineSnapshot } from "xstate";
import { machineLogic } from "../../src/actors/machine.ts";
import { Stepper } from "../../src/actors/step.ts";
import type { ActorEvent, Effect } from "../../src/actors/types.ts";

/** The machine actor's projections: when they say the details (inventory, IP, version) changed. */
describe("machine actor projections", () => {
  const stepper = new Stepper(machineLogic);
  const inventory = () => ({ hostname: "box-1", users: ["alice"], os: { name: "Debian", version: "12" }, elevated: false });
  let snapshot: AnyMachineSnapshot;
  let at = 1_700_000_000_000;
  /** The projection the event emitted, if any. */
  const step = (event: ActorEvent): (Effect & { status: string; details: boolean; inventory: unknown }) | undefined => {
    const r = stepper.step(snapshot, { ...event, at: ++at });
    snapshot = r.snapshot;
    return r.effects.find((e) => e.type === "machine.project") as never;
  };
  const connect = (conn: string, extra: Record<string, unknown> = {}) =>
    step({ type: "agent.connected", conn, ip: "10.0.0.1", agent_version: "1.0.0", inventory: inventory(), ...extra });

  test("a first connect, and a connect or status that changes inventory, IP or version, carry details; an unchanged one does not", () => {
    snapshot = stepper.initial({ id: "m-1" }).snapshot;
    expect(connect("c1")).toMatchObject({ status: "online", details: true, inventory: inventory() });
    expect(step({ type: "agent.disconnected", conn: "c1", reason: "1006" })).toMatchObject({ status: "offline", details: false });
    // Equal, not the same object: what a reconnecting agent sends.
    expect(connect("c2")).toMatchObject({ status: "online", details: false, inventory: inventory() });
    expect(step({ type: "agent.status", conn: "c2", inventory: inventory() })).toMatchObject({ details: false });
    expect(step({ type: "agent.status", conn: "c2", inventory: { ...inventory(), users: ["bob"] } })).toMatchObject({ details: true, inventory: { users: ["bob"] } });
    expect(connect("c3", { inventory: { ...inventory(), users: ["bob"] } })).toMatchObject({ details: false });
    expect(connect("c4", { ip: "10.0.0.2", inventory: { ...inventory(), users: ["bob"] } })).toMatchObject({ details: true });
    expect(connect("c5", { ip: "10.0.0.2", agent_version: "1.1.0", inventory: { ...inventory(), users: ["bob"] } })).toMatchObject({ details: true });
    // An agent that sends its inventory in a status after the welcome: the connect keeps the last one.
    expect(connect("c6", { ip: "10.0.0.2", agent_version: "1.1.0", inventory: undefined })).toMatchObject({ details: false, inventory: { users: ["bob"] } });
  });

  test("a server restart projects offline in full, whether the actor was online or not", () => {
    snapshot = stepper.initial({ id: "m-2" }).snapshot;
    connect("c1");
    expect(step({ type: "server.restarted" })).toMatchObject({ status: "offline", details: true, inventory: inventory() });
    // Offline already (its disconnect's projection may have been lost with the process).
    expect(step({ type: "server.restarted" })).toMatchObject({ status: "offline", details: true });
  });
});
