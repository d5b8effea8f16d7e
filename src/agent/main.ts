#!/usr/bin/env bun
import { runAgent } from "./agent.ts";
import { ConfigError, USAGE, parseConfig } from "./config.ts";
import { createAgentLogger } from "./log.ts";
import { AGENT_VERSION } from "./version.ts";

/**
 * `bun run agent -- --server … --site-code … --enrollment-key cek_… --state-dir …`, or the
 * compiled `tether-agent`. Exit codes: 0 after SIGTERM/SIGINT, 2 bad usage, 3 unusable state.
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
  const config = parsed.config;
  const log = createAgentLogger(config.logLevel);
  const stop = new AbortController();
  for (const sig of ["SIGTERM", "SIGINT"] as const) {
    process.on(sig, () => {
      if (stop.signal.aborted) return;
      log.info({ event: "agent.stopping", signal: sig }, "stopping");
      stop.abort();
    });
  }
  log.info({ event: "agent.start", version: AGENT_VERSION, server: config.server, state_dir: config.stateDir }, "tether agent starting");
  const result = await runAgent(config, log, stop.signal);
  if (result.kind === "fatal") {
    log.fatal({ event: "agent.fatal" }, result.message);
    return 3;
  }
  log.info({ event: "agent.stopped" }, "stopped cleanly");
  return 0;
}

const code = await main();
// pino writes synchronously to stdout; exit now rather than wait for stray timers.
process.exit(code);
