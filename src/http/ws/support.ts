import { Elysia } from "elysia";
import { addressKey } from "../../auth/client-ip.ts";
import { Serial } from "../../actors/serial.ts";
import { audit } from "../../audit/audit.ts";
import type { Verdict } from "../../auth/rate-limit.ts";
import { CLOSE, decode, encode, Heartbeat, MAX_AGENT_FRAME } from "../../protocol/agent.ts";
import { isDataFrame } from "../../protocol/frames.ts";
import { SUPPORT_CLOSE, SupportHello } from "../../protocol/support.ts";
import { claimSupportCode, reclaimSupportCode, unclaimSupportCode } from "../../sessions/support-codes.ts";
import type { AppDeps } from "../deps.ts";
import { bufferedAmount } from "./buffered.ts";

/**
 * `/ws/support`: the attended agent (S2) presents a support code instead of an agent key. The
 * code is claimed (single use) and the connection becomes the session's agent; a wrong code
 * counts toward a per-IP lockout (10 failures, 15 minutes), with one close code for every kind
 * of wrong (unknown, used, cancelled, expired). A used code brings the person's agent back to its
 * session, which decides (reclaimSupportCode): taken, or refused while its agent is still
 * connected (4203, retry) or once it has ended (4202). Then it speaks the session protocol, like
 * a managed agent, through the relay.
 */
const HANDSHAKE_MS = 10_000;

interface CodeCheck {
  verdict: Verdict;
  first: Awaited<ReturnType<typeof claimSupportCode>>;
  claimed: Awaited<ReturnType<typeof reclaimSupportCode>>;
  lockedNow: boolean;
}

type Stage =
  | { at: "hello"; timer: ReturnType<typeof setTimeout> }
  /** The hello is being checked: anything more before the welcome is out of order. */
  | { at: "claiming"; timer: ReturnType<typeof setTimeout> }
  | { at: "bound"; conn: string; sessionId: string; lastSeen: number; sweep: ReturnType<typeof setInterval> };

export const supportSocket = (deps: AppDeps) => {
  const stages = new Map<string, Stage>();
  const checks = new Serial();
  const DEFAULT_TENANT = "00000000-0000-0000-0000-000000000001";

  return new Elysia({ name: "support-socket" }).ws("/ws/support", {
    open(ws) {
      stages.set(ws.id, { at: "hello", timer: setTimeout(() => ws.raw.close(CLOSE.HANDSHAKE_TIMEOUT, "handshake not completed in time"), HANDSHAKE_MS) });
    },
    async message(ws, raw) {
      const stage = stages.get(ws.id);
      if (!stage) return;
      const frame = raw instanceof Uint8Array ? raw : null;
      if (!frame) return ws.raw.close(CLOSE.BAD_MESSAGE, "binary frames only");
      if (frame.byteLength > MAX_AGENT_FRAME) return ws.raw.close(CLOSE.TOO_BIG, "frame too large");

      // Nothing but the hello before the welcome (a second hello included).
      if (stage.at === "claiming") return ws.raw.close(CLOSE.BAD_MESSAGE, "expected hello");
      if (stage.at === "hello") {
        // Checked across awaits: the socket may close meanwhile (the close handler drops the stage).
        const claiming: Stage = { at: "claiming", timer: stage.timer };
        stages.set(ws.id, claiming);
        const open = () => stages.get(ws.id) === claiming;
        const ip = deps.ips.resolve(ws.raw.remoteAddress, ws.data.request.headers.get("x-forwarded-for"));
        const hello = decode(SupportHello, frame);
        if (!hello) return ws.raw.close(CLOSE.BAD_MESSAGE, "expected hello");
        // One code check at a time per address: guesses sent in parallel would all pass the
        // lockout check before the first failure was counted.
        const check: CodeCheck = { verdict: { ok: true }, first: null, claimed: null, lockedNow: false };
        await checks.run(ip, async () => {
          check.verdict = deps.limiters.supportCode.check(addressKey(ip));
          if (!check.verdict.ok) return;
          check.first = await claimSupportCode(deps.store, hello.code);
          check.claimed = check.first ?? (await reclaimSupportCode(deps.store, hello.code));
          if (!check.claimed) check.lockedNow = deps.limiters.supportCode.failure(addressKey(ip));
        });
        const { verdict, first, claimed, lockedNow } = check;
        if (!verdict.ok) {
          await audit(deps.store, { tenantId: DEFAULT_TENANT, type: "support_code.refused", outcome: "failure", actor: { type: "anonymous" }, ip, details: { reason: verdict.reason } }).catch(() => {});
          return ws.raw.close(SUPPORT_CLOSE.LOCKED_OUT, `too many attempts; retry in ${verdict.retryAfterSec} s`);
        }
        if (claimed && !open()) {
          // Closed before it was attached: the session is left as it was, and a first claim's code
          // is good again for the person's agent.
          if (first) await unclaimSupportCode(deps.store, hello.code, first.session_id).catch(() => {});
          return;
        }
        if (!claimed) {
          await audit(deps.store, { tenantId: DEFAULT_TENANT, type: "support_code.refused", outcome: "failure", actor: { type: "anonymous" }, ip, details: { reason: "bad_code", locked_out: lockedNow } }).catch(() => {});
          return ws.raw.close(SUPPORT_CLOSE.BAD_CODE, "unknown or expired code");
        }
        clearTimeout(stage.timer);
        const conn = crypto.randomUUID();
        // The welcome is the agent's first frame: what the session sends meanwhile (its
        // session.start, sent while it accepts the agent below) waits for it.
        let early: Uint8Array[] | null = [];
        const toAgent = (f: Uint8Array) => (early ? (early.push(f), f.byteLength) : ws.raw.send(f));
        deps.relay.addAgent(conn, { send: toAgent, buffered: () => bufferedAmount(ws.raw), close: (c, r) => ws.raw.close(c, r) }, null);
        const address = `session/${claimed.session_id}`;
        const attached = await deps.system.ask<{ ok: boolean; code?: string }>(address, { type: "agent.attached", conn, host: hello.hostname, user: hello.user, by_code: true }).catch(() => null);
        if (attached?.reply?.code === "AGENT_CONNECTED") {
          // Most likely the person's agent again, before its old connection is seen closed (a dead
          // path is found by the heartbeat sweep). The code matched: no failure for the lockout,
          // nor a success that would clear its count.
          deps.relay.removeAgent(conn);
          return ws.raw.close(SUPPORT_CLOSE.AGENT_CONNECTED, "this session's agent is still connected; retry shortly");
        }
        if (!attached?.reply?.ok) {
          deps.relay.removeAgent(conn);
          // No answer (the actor busy, failed, the runtime stopping) is not an end: the agent retries.
          if (!attached) return ws.raw.close(1011, "the session did not answer; try again");
          return ws.raw.close(SUPPORT_CLOSE.SESSION_ENDED, "the session has ended");
        }
        // Only a code the session took clears the address's failures: one known code presented
        // again and again must not reset the lockout of guesses in between.
        deps.limiters.supportCode.success(addressKey(ip));
        // Closed while it was attached: the session is told the agent is gone (by removeAgent, or
        // by the relay's attach if the session's start has not reached it yet).
        if (!open()) return deps.relay.removeAgent(conn);
        const audited = await audit(deps.store, { tenantId: claimed.tenant_id, type: "support_code.used", actor: { type: "anonymous", name: hello.user }, target: { type: "session", id: claimed.session_id }, ip, details: { hostname: hello.hostname } })
          .then(() => true, () => false);
        if (!open()) return deps.relay.removeAgent(conn);
        if (!audited) {
          // Every use of a code is audited; without its record the agent does not go on (it retries).
          deps.relay.removeAgent(conn);
          return ws.raw.close(1011, "could not record the code's use; try again");
        }
        const bound: Extract<Stage, { at: "bound" }> = {
          at: "bound", conn, sessionId: claimed.session_id, lastSeen: Date.now(),
          sweep: setInterval(() => {
            if (Date.now() - bound.lastSeen > deps.config.offlineAfterMs) ws.raw.close(CLOSE.SILENT, "no heartbeat");
          }, Math.max(50, Math.min(1000, deps.config.offlineAfterMs / 4))),
        };
        stages.set(ws.id, bound);
        ws.raw.send(encode({ t: "welcome", session: claimed.session_id, technician: claimed.technician, heartbeat_ms: deps.config.heartbeatMs } as never));
        const queued = early;
        early = null;
        for (const f of queued) ws.raw.send(f);
        return;
      }

      stage.lastSeen = Date.now();
      if (!isDataFrame(frame) && decode(Heartbeat, frame)) return;
      if (!deps.relay.fromAgent(stage.conn, frame)) ws.raw.close(CLOSE.BAD_MESSAGE, "not a protocol message");
    },
    close(ws) {
      const stage = stages.get(ws.id);
      stages.delete(ws.id);
      if (!stage) return;
      if (stage.at !== "bound") return clearTimeout(stage.timer);
      clearInterval(stage.sweep);
      deps.relay.removeAgent(stage.conn);
    },
  });
};
