import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { channelOf, payloadOf } from "../../src/protocol/frames.ts";
import { AgentToServer } from "../../src/protocol/relay.ts";
import { defaultExecEnv } from "../../src/agent/session/channel.ts";
import { SessionHost, type ConsentRequest, type SessionHostOptions } from "../../src/agent/session/host.ts";
import type { Outbound } from "../../src/agent/session/wire.ts";

/**
 * SessionHost without a socket: a fake `send` that checks every message against the contract
 * (AgentToServer) and keeps messages and data frames apart, a presenter and a logger that
 * record, and a temp dir as the home directory.
 */
export interface Harness {
  host: SessionHost;
  home: string;
  messages: AgentToServer[];
  frames: Uint8Array[];
  logLines: string[];
  shown: Array<{ what: string; session: string; a?: string; b?: string }>;
  consents: ConsentRequest[];
  /** Resolves with the first message (from `from` on) that matches; throws after `ms`. */
  waitMessage<T extends AgentToServer["t"]>(t: T, pred?: (m: Extract<AgentToServer, { t: T }>) => boolean, ms?: number): Promise<Extract<AgentToServer, { t: T }>>;
  /** All payload bytes received on `channel` so far. */
  bytes(channel: number): Uint8Array;
  text(channel: number): string;
  waitText(channel: number, needle: string | RegExp, ms?: number): Promise<string>;
  /** A send function of its own (a second connection), capturing into the same arrays. */
  sender(): (out: Outbound) => void;
  cleanup(): Promise<void>;
}

export const SESSION = "0190a3c4-0000-7000-8000-00000000000a";
export const SESSION2 = "0190a3c4-0000-7000-8000-00000000000b";

export function harness(opts: Partial<SessionHostOptions> = {}, env: Record<string, string | undefined> = {}): Harness {
  const home = mkdtempSync(join(tmpdir(), "tether-session-test-"));
  const messages: AgentToServer[] = [];
  const frames: Uint8Array[] = [];
  const logLines: string[] = [];
  const shown: Harness["shown"] = [];
  const consents: ConsentRequest[] = [];
  const wakers = new Set<() => void>();
  const wake = () => {
    for (const w of [...wakers]) w();
  };
  const log = pino({ level: "debug" }, { write: (s: string) => void logLines.push(s) });
  const exec = defaultExecEnv({ PATH: process.env.PATH, HOME: home, SHELL: "/bin/sh", LANG: "C", ...env });
  const sender = () => (out: Outbound) => {
    if (out instanceof Uint8Array) frames.push(out);
    else {
      const parsed = AgentToServer.safeParse(out);
      if (!parsed.success) throw new Error(`outside the contract: ${JSON.stringify(out)}: ${parsed.error.message}`);
      messages.push(out);
    }
    wake();
  };
  const host = new SessionHost({
    consent: async (req) => {
      consents.push(req);
      return true;
    },
    presenter: {
      started: (req) => shown.push({ what: "started", session: req.session, a: req.technician }),
      notice: (session, text) => shown.push({ what: "notice", session, a: text }),
      chat: (session, from, text) => shown.push({ what: "chat", session, a: from, b: text }),
      ended: (session, reason) => shown.push({ what: "ended", session, a: reason }),
    },
    log,
    graceMs: 60_000,
    exec,
    ...opts,
  });
  host.attach(sender());

  const until = async <T>(probe: () => T | undefined, ms: number, what: string): Promise<T> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const v = probe();
      if (v !== undefined) return v;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}; messages: ${JSON.stringify(messages)}`);
      await new Promise<void>((r) => {
        const done = () => {
          wakers.delete(done);
          clearTimeout(t);
          r();
        };
        const t = setTimeout(done, Math.min(left, 50));
        wakers.add(done);
      });
    }
  };
  const bytes = (channel: number) => Buffer.concat(frames.filter((f) => channelOf(f) === channel).map(payloadOf));
  const h: Harness = {
    host,
    home,
    messages,
    frames,
    logLines,
    shown,
    consents,
    waitMessage: (t, pred, ms = 10_000) =>
      until(() => messages.find((m) => m.t === t && (!pred || pred(m as never))) as never, ms, `${t} message`),
    bytes,
    text: (channel) => bytes(channel).toString("utf8"),
    waitText: (channel, needle, ms = 10_000) =>
      until(() => {
        const s = bytes(channel).toString("utf8");
        return (typeof needle === "string" ? s.includes(needle) : needle.test(s)) ? s : undefined;
      }, ms, `${needle} on channel ${channel}`),
    sender,
    cleanup: async () => {
      await host.shutdown();
      rmSync(home, { recursive: true, force: true });
    },
  };
  return h;
}

/** session.start for SESSION, granted without consent unless told otherwise. */
export function start(h: Harness, o: { session?: string; consent?: "required" | "not_required"; resume?: boolean } = {}): void {
  h.host.handle({ t: "session.start", session: o.session ?? SESSION, kind: "unattended", technician: "Alice Tech", consent: o.consent ?? "not_required", resume: o.resume ?? false });
}

let nextChannel = 100;
export const channelId = () => nextChannel++;
