import { hostname, userInfo } from "node:os";
import { CLOSE, PROTOCOL_VERSION, decode, encode } from "../protocol/agent.ts";
import type { z } from "zod";
import { SUPPORT_CLOSE, SupportWelcome, type SupportHello } from "../protocol/support.ts";
import { sleep } from "./backoff.ts";
import { supportSocketUrl, type AttendedConfig } from "./config.ts";
import { terminate, watchLiveness, type Liveness } from "./liveness.ts";
import type { Logger } from "./log.ts";
import { PersonConsole, attendedConsent, consolePresenter, printable } from "./session/console.ts";
import { SessionHost, type Presenter } from "./session/host.ts";
import { decodeInbound, encodeOutbound, encodeSupportHello, frameBytes, type Outbound } from "./session/wire.ts";
import { AGENT_VERSION } from "./version.ts";

/** Exit codes of attended mode (2 is bad usage, from main.ts). */
export const ATTENDED_EXIT = { ENDED: 0, REFUSED: 4, UNREACHABLE: 5 } as const;

/** Before the first welcome: this many connects in all (quick retries) when the network fails. */
const FIRST_CONNECT_TRIES = 3;
const HANDSHAKE_TIMEOUT_MS = 30_000;

export interface AttendedIo {
  out: { write(s: string): unknown };
  input: NodeJS.ReadableStream | null;
  /** stdin is a terminal: chat lines can be typed. */
  interactive: boolean;
}

interface Attempt {
  code: number;
  reason: string;
  welcomed: boolean;
}

/**
 * Attended mode (S2, S7): the person at this machine runs the agent with the support code a
 * technician gave them. One connection to /ws/support: hello {code} → welcome; the person sees
 * who wants to connect and answers the consent question; then the session runs as in managed
 * mode (same SessionHost) until it ends. A dropped connection is retried with the same code
 * within the grace period. Returns the exit code.
 */
export async function runAttended(config: AttendedConfig, log: Logger, signal: AbortSignal, io: AttendedIo): Promise<number> {
  const person = new PersonConsole(io.out, io.input);
  const chat = io.interactive;
  let ended: string | null = null; // the reason, once the session is over
  let endSession: () => void = () => {};
  const sessionOver = new Promise<void>((r) => (endSession = r));
  const shown = consolePresenter(person, chat);
  const presenter: Presenter = {
    ...shown,
    ended: (session, reason) => {
      if (ended) return;
      ended = reason;
      shown.ended(session, reason);
      endSession();
    },
  };
  const host = new SessionHost({
    consent: attendedConsent(config.consent, person),
    presenter,
    log,
    graceMs: config.sessionGraceMs,
  });
  let sessionId: string | null = null;
  if (chat) {
    person.onChatLine = (line) => {
      if (!sessionId || !host.chat(sessionId, line)) person.print("(not sent: no session is active)");
    };
    person.listen();
  }

  const url = supportSocketUrl(config.server);
  const hello: z.infer<typeof SupportHello> = {
    t: "hello",
    code: config.code,
    agent_version: AGENT_VERSION,
    protocol: PROTOCOL_VERSION,
    hostname: hostname().slice(0, 255),
    user: safeUser().slice(0, 128),
  };
  person.print(`Connecting to ${config.server} with support code ${config.code}…`);

  let welcomedEver = false;
  let lostAt = 0;
  let tries = 0;
  try {
    for (;;) {
      const attempt = await connectOnce(url, hello, host, log, signal, sessionOver, (w) => {
        if (!welcomedEver) person.print(`Technician ${printable(w.technician, true)} wants to connect.`);
        else person.print("Reconnected.");
        welcomedEver = true;
        sessionId = w.session;
        lostAt = 0;
      });
      if (ended) return ended === "agent_lost" ? ATTENDED_EXIT.UNREACHABLE : ATTENDED_EXIT.ENDED;
      if (signal.aborted) {
        person.print("Stopped; the session is over.");
        return ATTENDED_EXIT.ENDED;
      }
      log.info({ event: "support.closed", code: attempt.code, reason: attempt.reason, welcomed: attempt.welcomed }, "connection closed");
      if (attempt.code === SUPPORT_CLOSE.BAD_CODE) {
        person.print(welcomedEver
          ? "The connection was lost and the session cannot be resumed (the server no longer accepts this code)."
          : "That support code was not accepted: it is unknown, already used, cancelled or expired. Ask your technician for a new code.");
        return welcomedEver ? ATTENDED_EXIT.UNREACHABLE : ATTENDED_EXIT.REFUSED;
      }
      if (attempt.code === SUPPORT_CLOSE.LOCKED_OUT) {
        person.print("Too many wrong support codes were tried from this network. Wait 15 minutes, then try again with the code your technician gave you.");
        return ATTENDED_EXIT.REFUSED;
      }
      if (attempt.code === SUPPORT_CLOSE.SESSION_ENDED) {
        presenter.ended(sessionId ?? "", attempt.reason || "technician");
        return ATTENDED_EXIT.ENDED;
      }
      // The network, the server restarting, or (4203) the code's session still holding an agent
      // connection, most likely our own dropped one the server has not seen close yet: retry
      // (quickly before the first welcome, within the grace period after it).
      if (welcomedEver) {
        if (ended) return ATTENDED_EXIT.UNREACHABLE; // the grace period ran out meanwhile
        if (!lostAt) {
          lostAt = Date.now();
          tries = 0;
          person.print("The connection was lost; reconnecting…");
        }
        if (Date.now() - lostAt >= config.sessionGraceMs) {
          presenter.ended(sessionId ?? "", "agent_lost");
          return ATTENDED_EXIT.UNREACHABLE;
        }
      } else if (tries + 1 >= FIRST_CONNECT_TRIES) {
        if (attempt.code === SUPPORT_CLOSE.AGENT_CONNECTED) {
          person.print("Another connection is using this support code (is the agent already running in another window?). If not, ask your technician for a new code.");
          return ATTENDED_EXIT.REFUSED;
        }
        person.print(`Could not connect to ${config.server} (${attempt.reason || `code ${attempt.code}`}). Check the address, or ask your technician.`);
        return ATTENDED_EXIT.UNREACHABLE;
      }
      const delay = Math.min(5_000, 500 * 2 ** tries++); // 0.5 s, 1 s, 2 s, … 5 s
      if (!(await sleep(delay, signal))) {
        person.print("Stopped; the session is over.");
        return ATTENDED_EXIT.ENDED;
      }
      if (ended) return ATTENDED_EXIT.UNREACHABLE;
    }
  } finally {
    person.close();
    await host.shutdown();
  }
}

type Welcome = ReturnType<typeof SupportWelcome.parse>;

/** One /ws/support connection; resolves when it closes (or, after the session ended, once closed by us). */
function connectOnce(
  url: string,
  hello: z.infer<typeof SupportHello>,
  host: SessionHost,
  log: Logger,
  signal: AbortSignal,
  sessionOver: Promise<void>,
  onWelcome: (w: Welcome) => void,
): Promise<Attempt> {
  return new Promise((resolve) => {
    let welcomed = false;
    let done = false;
    let seq = 0;
    let heartbeat: ReturnType<typeof setInterval> | null = null;
    let liveness: Liveness | null = null;
    let ws: WebSocket;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      resolve({ code: 1006, reason: (e as Error).message, welcomed });
      return;
    }
    ws.binaryType = "arraybuffer";
    const finish = (code: number, reason: string) => {
      if (done) return;
      done = true;
      if (heartbeat) clearInterval(heartbeat);
      liveness?.stop();
      clearTimeout(handshakeTimer);
      signal.removeEventListener("abort", onAbort);
      if (welcomed) host.detach();
      resolve({ code, reason, welcomed });
    };
    const close = (code: number, reason: string) => {
      try {
        ws.close(code, reason);
      } catch {}
      // Do not hang on a server that does not answer the close.
      setTimeout(() => finish(code, reason), 2_000).unref?.();
    };
    const onAbort = () => close(CLOSE.NORMAL, "agent stopping");
    signal.addEventListener("abort", onAbort, { once: true });
    void sessionOver.then(async () => {
      if (done) return;
      await host.shutdown(); // the channels' ch.closed go out before the socket closes
      close(CLOSE.NORMAL, "session ended");
    });
    const handshakeTimer = setTimeout(() => {
      if (!welcomed) {
        log.warn({ event: "support.handshake_timeout" }, "no welcome from the server in time");
        close(CLOSE.NORMAL, "handshake timeout");
      }
    }, HANDSHAKE_TIMEOUT_MS);

    const send = (out: Outbound) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(encodeOutbound(out));
    };
    ws.addEventListener("open", () => {
      log.debug({ event: "support.open", url }, "socket open; sending hello");
      ws.send(encodeSupportHello(hello));
    });
    ws.addEventListener("message", (ev) => {
      const frame = frameBytes(ev.data);
      if (!frame) return bad();
      if (!welcomed) {
        const w = decode(SupportWelcome, frame);
        if (!w) return bad();
        welcomed = true;
        clearTimeout(handshakeTimer);
        log.info({ event: "support.welcome", session: w.session, technician: w.technician, heartbeat_ms: w.heartbeat_ms }, "welcomed");
        heartbeat = setInterval(() => {
          if (ws.readyState === WebSocket.OPEN) ws.send(encode({ t: "heartbeat", seq: seq++ }) as Uint8Array<ArrayBuffer>);
        }, w.heartbeat_ms);
        // A silently dead path (src/agent/liveness.ts): dropped and retried with the same code,
        // like any lost connection, within the grace period.
        liveness = watchLiveness(ws, {
          intervalMs: w.heartbeat_ms,
          onDead: (silentMs, limitMs) => {
            log.warn({ event: "support.silent", silent_ms: silentMs, limit_ms: limitMs }, "nothing heard from the server for too long: the path is dead; reconnecting");
            terminate(ws);
            finish(1006, `server silent for ${silentMs} ms`);
          },
        });
        host.attach(send, () => ws.bufferedAmount);
        onWelcome(w);
        return;
      }
      const inbound = decodeInbound(frame);
      if (!inbound) return bad();
      if (inbound.kind === "data") host.data(inbound.frame);
      else host.handle(inbound.message);
    });
    const bad = () => {
      log.warn({ event: "support.bad_frame", welcomed }, "the server sent a frame that is not a protocol message; closing");
      close(CLOSE.BAD_MESSAGE, "bad frame");
    };
    ws.addEventListener("close", (ev) => finish(ev.code, ev.reason));
  });
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? "unknown";
  }
}
