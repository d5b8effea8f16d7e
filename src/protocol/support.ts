import { z } from "zod";
import { PROTOCOL_VERSION } from "./agent.ts";

/**
 * `/ws/support`: the attended agent (S2) connects with a support code instead of an agent key.
 *
 *   agent  → hello { code, agent_version, protocol: 1, hostname, user }
 *   server → welcome { session, technician, heartbeat_ms }      (or a close code below)
 *
 * Then the session messages of relay.ts and data frames of frames.ts, and heartbeats as on
 * /ws/agent. The code is single use: this connection is the session's agent until it closes.
 */
export const SupportHello = z.object({
  t: z.literal("hello"),
  code: z.string().min(1).max(32),
  agent_version: z.string().max(64),
  protocol: z.literal(PROTOCOL_VERSION),
  hostname: z.string().max(255),
  user: z.string().max(128).describe("the person's login name on the machine, shown to the technician"),
});
export const SupportWelcome = z.object({
  t: z.literal("welcome"),
  session: z.uuid(),
  technician: z.string(),
  heartbeat_ms: z.number().int().positive(),
});

export const SUPPORT_CLOSE = {
  BAD_CODE: 4200, // unknown, used, cancelled or expired code: one answer for all
  LOCKED_OUT: 4201, // too many failures from this address; retry after 15 minutes
  SESSION_ENDED: 4202,
  // The code matched, but its session's agent is still connected (the server has not seen the old
  // connection close yet): retry shortly. Not a failure for the lockout.
  AGENT_CONNECTED: 4203,
} as const;
