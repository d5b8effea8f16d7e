/**
 * Notices a silently dead path to the server (a NAT or firewall that dropped the flow, a server
 * host that lost power): nothing arrives, nothing fails, and TCP alone takes ~15 minutes to give
 * up. After its welcome the server sends nothing on its own, so every `intervalMs` this pings
 * (RFC 6455: the server answers with a pong; Bun's server does so by itself) and any frame or
 * pong received counts as heard. Silent for `deadAfterMs`: `onDead` runs, once; the caller
 * drops the socket and reconnects. No protocol change: pings are WebSocket control frames.
 *
 * Usage, on any client WebSocket after its welcome:
 *   const live = watchLiveness(ws, { intervalMs: w.heartbeat_ms, deadAfterMs: w.offline_after_ms,
 *     onDead: (silentMs) => { log.warn(…); terminate(ws); finish(…) } });
 *   …and live.stop() when the socket closes for any other reason.
 */
export interface LivenessOptions {
  /** How often to ping and check: the server's heartbeat_ms. */
  intervalMs: number;
  /** Silence that means the path is dead: the welcome's offline_after_ms; default DEFAULT_DEAD_AFTER × intervalMs. */
  deadAfterMs?: number;
  /** Called once when nothing was heard for deadAfterMs; the watcher has stopped by then. */
  onDead: (silentMs: number, limitMs: number) => void;
}

/** The part of a client WebSocket this needs: Bun's has `ping()` and a `pong` event (the DOM's type does not say so). */
export interface PingableSocket {
  readonly readyState: number;
  ping(): void;
  addEventListener(type: "message" | "pong", listener: () => void): void;
  removeEventListener(type: "message" | "pong", listener: () => void): void;
}

export interface Liveness {
  /** Stops the timer and the listeners; idempotent. */
  stop(): void;
  /** Milliseconds since anything was last heard. */
  silentMs(): number;
  /** The silence after which onDead runs. */
  readonly limitMs: number;
}

/** The server's own rule (offline after 3 heartbeats) when it did not say (attended's welcome). */
export const DEFAULT_DEAD_AFTER = 3;

export function watchLiveness(socket: WebSocket | PingableSocket, o: LivenessOptions): Liveness {
  const ws = socket as PingableSocket;
  const limitMs = o.deadAfterMs ?? DEFAULT_DEAD_AFTER * o.intervalMs;
  let lastHeard = Date.now();
  let lastTick = lastHeard;
  let stopped = false;
  const heard = () => {
    lastHeard = Date.now();
  };
  const stop = () => {
    if (stopped) return;
    stopped = true;
    clearInterval(timer);
    ws.removeEventListener("message", heard);
    ws.removeEventListener("pong", heard);
  };
  // Checked at each tick, so a dead path is noticed within limitMs + intervalMs.
  const timer = setInterval(() => {
    const now = Date.now();
    // A late tick: this process was not running (SIGSTOP, a suspended VM or laptop, a blocked
    // event loop), so frames may be waiting unread. Not the server's silence: one more interval
    // for them and for an answer to the ping below.
    if (now - lastTick > 2 * o.intervalMs) lastHeard = Math.max(lastHeard, now - limitMs + o.intervalMs);
    lastTick = now;
    const silent = now - lastHeard;
    if (silent >= limitMs) {
      stop();
      o.onDead(silent, limitMs);
      return;
    }
    if (ws.readyState !== WebSocket.OPEN) return;
    try {
      ws.ping();
    } catch {
      // A socket closing meanwhile: its close event ends the caller's session.
    }
  }, o.intervalMs);
  ws.addEventListener("message", heard);
  ws.addEventListener("pong", heard);
  return { stop, silentMs: () => Date.now() - lastHeard, limitMs };
}

/** Drops the connection at once, without a close handshake that a dead path would never answer. */
export function terminate(ws: WebSocket): void {
  try {
    (ws as unknown as { terminate(): void }).terminate(); // Bun's client
  } catch {}
}
