import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, resolve } from "node:path";
import type { z } from "zod";
import type { AgentToServer, ChannelEnd, ChannelType } from "../../protocol/relay.ts";
import type { Logger } from "../log.ts";

/** How a channel ended (the fields of ch.closed besides `t` and `channel`). */
export type End = z.infer<typeof ChannelEnd>;

/**
 * Why the host stops a channel. Undefined is the viewer's ch.close: a terminal then ends
 * "closed", a transfer or command "cancelled".
 */
export type StopReason = "session_ended" | "agent_lost" | undefined;

/** What a channel may do; the host gives each channel its own. */
export interface ChannelContext {
  readonly id: number;
  readonly exec: ExecEnv;
  readonly log: Logger;
  /** A data frame out. Dropped while the agent is disconnected. */
  frame(frame: Uint8Array): void;
  /** ch.opened, files.listing, ch.ack. Dropped while the agent is disconnected. */
  send(message: AgentToServer): void;
  /** Bytes waiting in the agent's socket (0 while disconnected): for output flow control. */
  backlog(): number;
  /** The channel is over: the host sends ch.closed (or keeps it for the resume). Once only. */
  end(end: End): void;
}

/** One open channel. Every method may be called after the channel ended; it then does nothing. */
export interface Channel {
  readonly type: ChannelType;
  /** An incoming data frame's payload. */
  input(payload: Uint8Array): void;
  resize(cols: number, rows: number): void;
  eof(): void;
  ack(bytes: number): void;
  stop(reason: StopReason): void;
  /** Terminals and commands keep running through a disconnect; transfers cannot have a gap. */
  readonly survivesDisconnect: boolean;
}

/** Where shells and commands run, and with what environment. */
export interface ExecEnv {
  shell: string;
  home: string;
  env: Record<string, string>;
}

/**
 * The environment for the machine's shells and commands: the agent's own, without its
 * TETHER_* settings (the first-run enrollment key may be among them), TERM for the PTY.
 */
export function defaultExecEnv(base: Record<string, string | undefined> = process.env): ExecEnv {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(base)) if (v !== undefined && !k.startsWith("TETHER_")) env[k] = v;
  let home = base.HOME || safeHomedir();
  if (!home || !existsSync(home)) home = "/";
  env.HOME = home;
  env.TERM = "xterm-256color";
  const shell = base.SHELL && isAbsolute(base.SHELL) && existsSync(base.SHELL) ? base.SHELL : "/bin/sh";
  return { shell, home, env };
}

function safeHomedir(): string {
  try {
    return homedir();
  } catch {
    return "/";
  }
}

/** A viewer's path: absolute as given, `~` and relative paths from the home directory. */
export function resolvePath(exec: ExecEnv, path: string): string {
  if (path === "~") return exec.home;
  if (path.startsWith("~/")) return resolve(exec.home, path.slice(2));
  return resolve(exec.home, path);
}

/** An error as ch.closed carries it: the errno code (ENOENT, EACCES, …) when there is one. */
export function errorEnd(e: unknown, fallback = "IO"): End {
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === "string" && /^[A-Z][A-Z0-9_]{1,63}$/.test(err.code) ? err.code : fallback;
  const message = typeof err?.message === "string" ? err.message : String(e);
  return { reason: "error", error: { code, message: message.slice(0, 512) } };
}

export function failure(code: string, message: string): End {
  return { reason: "error", error: { code, message: message.slice(0, 512) } };
}
