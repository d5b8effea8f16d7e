import pino from "pino";

export type Logger = pino.Logger;

/**
 * JSON lines on stdout (fd 1; attended mode passes 2, stdout being the person's). Keys never go
 * in: callers log `key_prefix` at most, and the redaction below is a second line of defence for
 * any field named like a secret. Session logs carry no file contents, terminal bytes or chat.
 */
export function createAgentLogger(level = "info", fd: 1 | 2 = 1): Logger {
  const options: pino.LoggerOptions = {
    level,
    base: { service: "tether-agent", pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ["key", "enrollment_key", "private_key", "*.key", "*.enrollment_key", "*.private_key"], censor: "[redacted]" },
  };
  return fd === 1 ? pino(options) : pino(options, pino.destination({ fd, sync: true }));
}
