import { SystemStoppedError } from "../actors/errors.ts";
import type { ActorSystem } from "../actors/system.ts";
import type { Logger } from "../log.ts";

/** Waits between tries: about a minute in all. */
const RETRY_MS = [250, 500, 1_000, 2_000, 4_000, 8_000, 15_000, 30_000];

/**
 * Tells a machine that its agent's connection is gone. The machine must hear it, or it stays
 * online with nobody there: a fire-and-forget send whose commit failed (the database briefly
 * away) was lost with it. So the event is asked for and, while that fails, asked again; it is
 * idempotent, since the actor ignores the disconnect of a connection that is not its current
 * one. It gives up when the system stops (the next start sends `server.restarted` instead).
 */
export async function reportDisconnect(system: ActorSystem, machineId: string, conn: string, reason: string, log: Logger, retryMs = RETRY_MS): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await system.ask(`machine/${machineId}`, { type: "agent.disconnected", conn, reason });
      return;
    } catch (err) {
      if (err instanceof SystemStoppedError) return;
      if (attempt >= retryMs.length) {
        log.error({ machine_id: machineId, conn, err: (err as Error).message }, "could not record an agent's disconnect");
        return;
      }
      // Unreferenced: a retry does not keep a stopping process alive.
      await new Promise((resolve) => setTimeout(resolve, retryMs[attempt]).unref());
    }
  }
}
