#!/usr/bin/env bun
import { runAgent } from "./agent.ts";
import { runAttended } from "./attended.ts";
import { ConfigError, USAGE, parseConfig } from "./config.ts";
import { createAgentLogger } from "./log.ts";
import { AGENT_VERSION } from "./version.ts";

/**
 * `bun run agent -- --server … --site-code … --enrollment-key cek_… --state-dir …`, or the
 * compiled `tether-agent`. Exit codes (EXIT in credentials.ts): 0 after SIGTERM/SIGINT, 2 bad
 * usage, 3 unusable state and no enrollment key to recover with, 6 a state dir enrolled on
 * another machine (a clone) and no enrollment key.
 * Attended mode (`--server … --code …`): 0 session over, 4 code refused, 5 server unreachable.
 */
async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseConfig(process.argv.slice(2));
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    process.stderr.write(`tether-agent: ${e.message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.kind === "help") {
    process.stdout.write(USAGE);
    return 0;
  }
  if (parsed.kind === "version") {
    process.stdout.write(`tether-agent ${AGENT_VERSION}\n`);
    return 0;
  }
  const stop = new AbortController();
  const log = createAgentLogger(parsed.config.logLevel, parsed.kind === "attended" ? 2 : 1);
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.on(sig, () => {
      if (stop.signal.aborted) return;
      log.info({ event: "agent.stopping", signal: sig }, "stopping");
      stop.abort();
    });
  }
  if (parsed.kind === "attended") {
    log.info({ event: "agent.start", mode: "attended", version: AGENT_VERSION, server: parsed.config.server }, "tether agent starting (attended)");
    const stdin = process.stdin;
    const code = await runAttended(parsed.config, log, stop.signal, { out: process.stdout, input: stdin, interactive: !!stdin.isTTY });
    await new Promise<void>((r) => process.stdout.write("", () => r())); // the person's text is out before exit
    return code;
  }
  const config = parsed.config;
  log.info({ event: "agent.start", version: AGENT_VERSION, server: config.server, state_dir: config.stateDir }, "tether agent starting");
  const result = await runAgent(config, log, stop.signal);
  if (result.kind === "fatal") {
    log.fatal({ event: "agent.fatal", exit_code: result.exitCode }, result.message);
    return result.exitCode;
  }
  log.info({ event: "agent.stopped" }, "stopped cleanly");
  return 0;
}

const code = await main();
// pino writes synchronously to stdout; exit now rather than wait for stray timers.
process.exit(code);
