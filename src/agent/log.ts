import pino from "pino";

export type Logger = pino.Logger;

/**
 * JSON lines on stdout. Keys never go in: callers log `key_prefix` at most, and the redaction
 * below is a second line of defence for any field named like a secret.
 */
export function createAgentLogger(level = "info"): Logger {
  return pino({
    level,
    base: { service: "tether-agent", pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: ["key", "enrollment_key", "private_key", "*.key", "*.enrollment_key", "*.private_key"], censor: "[redacted]" },
  });
}
