import pino from "pino";

export type Logger = pino.Logger;

/** Structured JSON logs on stdout. Secrets never go in: log ids and fingerprints instead. */
export function createLogger(level = process.env.LOG_LEVEL ?? "info"): Logger {
  return pino({ level, base: { service: "tether" }, timestamp: pino.stdTimeFunctions.isoTime });
}

/** A logger that drops everything, for library use and tests. */
export const silentLogger: Logger = pino({ level: "silent" });
