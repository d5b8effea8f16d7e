import { parseArgs } from "node:util";
import type { z } from "zod";
import type { EnrollLabels } from "../protocol/machines.ts";

/**
 * The agent's configuration: command-line flags, each with an environment fallback
 * (TETHER_AGENT_*), so a systemd unit can carry it in an EnvironmentFile readable by root only.
 * The enrollment key is needed only to enroll: the first run, and a start that finds the state
 * dir copied from another machine or its credentials lost (credentials.ts). An enrolled agent
 * runs without it; it is never written to the state dir.
 */
export interface AgentConfig {
  /** The first of `servers`. */
  server: string;
  /** Every server to try, in turn (`--server a,b`): a primary and its standbys. */
  servers: string[];
  siteCode?: string;
  enrollmentKey?: string;
  stateDir: string;
  labels: z.input<typeof EnrollLabels>;
  /** 202 / 401 / 409 from enroll: re-check this often (reference: 300 s). */
  enrollRetryMs: number;
  /** Network errors, 5xx, undecodable answers from enroll, 429 without Retry-After. */
  enrollShortRetryMs: number;
  /** Reconnect backoff: first ceiling and cap. */
  reconnectBaseMs: number;
  reconnectCapMs: number;
  /** After a refusal (revoked / unknown key, removed or pending machine, bad signature). */
  refusedRetryMs: number;
  /** Status (inventory) is re-sent at least this often, and when it changes (checked every minute or so). */
  statusIntervalMs: number;
  statusCheckMs: number;
  /** Where the machine_uid comes from; tests point these at files of their own. */
  machineIdFile: string;
  productUuidFile: string;
  logLevel: string;
  /** Sessions: how long they outlive a dropped connection, waiting for the server's resume. */
  sessionGraceMs: number;
  /**
   * Sessions that require consent on a managed machine: a service has nobody to ask, so this
   * flag answers; `deny` unless the operator chose otherwise.
   */
  unattendedConsent: "allow" | "deny";
}

/** Attended mode (`--code`): one support session for the person at this machine. */
export interface AttendedConfig {
  server: string;
  code: string;
  /** `ask` the person on the terminal (default), or answer automatically (automation, tests). */
  consent: "ask" | "allow" | "deny";
  sessionGraceMs: number;
  /** Logs go to stderr in attended mode (stdout is for the person); `warn` by default. */
  logLevel: string;
}

export const USAGE = `tether-agent: the Tether agent (managed machines; attended support with a code)

Usage:
  tether-agent --server <url> --state-dir <dir> [--site-code <code> --enrollment-key <cek_…>] [labels]
  tether-agent --server <url> --code <support code> [--consent ask|allow|deny]

The first run generates the machine's Ed25519 key pair, enrolls with the site's enrollment key
and stores its agent key in the state dir (mode 0600); later runs connect with what is stored
and do not enroll again, so the site code and enrollment key can be left out. Only a state dir
copied from another machine (a clone: enrolled as a new machine) or with its credentials lost
(enrolled again as the same machine) needs them again.
Exit codes: 0 stopped by SIGTERM/SIGINT, 2 bad usage, 3 unusable state dir and no enrollment
key to recover with, 6 state dir enrolled on another machine (a clone) and no enrollment key.

Options (environment fallback in brackets):
  --server <url>[,<url>…]   Tether server(s), http(s)://host[:port]; several are tried in turn  [TETHER_AGENT_SERVER]
  --state-dir <dir>         where keys are kept (created 0700)             [TETHER_AGENT_STATE_DIR]
  --site-code <code>        site to enroll at (first run)                  [TETHER_AGENT_SITE_CODE]
  --enrollment-key <cek_…>  the site's enrollment key (first run)          [TETHER_AGENT_ENROLLMENT_KEY]
  --company, --site, --department, --device-type <text>   labels sent at enrollment
  --tag <tag>               a label tag; repeatable
  --enroll-retry-ms <ms>    slow enroll retry (202/401/409), default 300000 [TETHER_AGENT_ENROLL_RETRY_MS]
  --enroll-short-retry-ms <ms>  network/5xx enroll retry, default 30000    [TETHER_AGENT_ENROLL_SHORT_RETRY_MS]
  --reconnect-base-ms <ms>  reconnect backoff start, default 1000           [TETHER_AGENT_RECONNECT_BASE_MS]
  --reconnect-cap-ms <ms>   reconnect backoff cap, default 30000            [TETHER_AGENT_RECONNECT_CAP_MS]
  --refused-retry-ms <ms>   retry after the server refused the key, default 300000 [TETHER_AGENT_REFUSED_RETRY_MS]
  --status-interval-ms <ms> re-send the inventory at least this often, default 300000 [TETHER_AGENT_STATUS_INTERVAL_MS]
  --log-level <level>       pino level, default info (attended: warn, on stderr) [TETHER_AGENT_LOG_LEVEL]
  --session-grace-ms <ms>   sessions outlive a lost connection this long, default 60000 [TETHER_AGENT_SESSION_GRACE_MS]
  --unattended-consent allow|deny   answer for sessions that require consent on this managed
                            machine (a service has nobody to ask), default deny [TETHER_AGENT_UNATTENDED_CONSENT]
  --help, --version

Attended mode (a person at this machine asked for help and got a support code):
  --code <code>             the support code the technician gave; connects once, no state dir
  --consent ask|allow|deny  ask on this terminal (default), or answer automatically
  Exit codes: 0 the session ended (or Ctrl-C), 2 bad usage, 4 code refused or locked out,
  5 the server could not be reached or the connection was lost for good.
`;

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

export type Parsed = { kind: "help" } | { kind: "version" } | { kind: "run"; config: AgentConfig } | { kind: "attended"; config: AttendedConfig };

export function parseConfig(argv: string[], env: Env = process.env): Parsed {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        server: { type: "string" },
        "state-dir": { type: "string" },
        "site-code": { type: "string" },
        "enrollment-key": { type: "string" },
        company: { type: "string" },
        site: { type: "string" },
        department: { type: "string" },
        "device-type": { type: "string" },
        tag: { type: "string", multiple: true },
        "enroll-retry-ms": { type: "string" },
        "enroll-short-retry-ms": { type: "string" },
        "reconnect-base-ms": { type: "string" },
        "reconnect-cap-ms": { type: "string" },
        "refused-retry-ms": { type: "string" },
        "status-interval-ms": { type: "string" },
        "log-level": { type: "string" },
        "session-grace-ms": { type: "string" },
        "unattended-consent": { type: "string" },
        code: { type: "string" },
        consent: { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "v" },
      },
    }));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  if (values.help) return { kind: "help" };
  if (values.version) return { kind: "version" };

  const pick = (flag: string | undefined, name: string) => {
    const v = flag ?? env[`TETHER_AGENT_${name}`];
    return v === undefined || v === "" ? undefined : v;
  };
  const ms = (flag: string | undefined, name: string, fallback: number) => {
    const raw = pick(flag, name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${name.toLowerCase().replaceAll("_", "-")} must be a positive integer of milliseconds, got ${JSON.stringify(raw)}`);
    return n;
  };

  const server = pick(values.server, "SERVER");
  if (!server) throw new ConfigError("--server is required");
  // Several servers (a primary and its standbys), comma-separated: the agent tries them in turn.
  const servers = server.split(",").map((one) => one.trim()).filter(Boolean).map((one) => {
    let url: URL;
    try {
      url = new URL(one);
    } catch {
      throw new ConfigError(`--server is not a URL: ${JSON.stringify(one)}`);
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") throw new ConfigError("--server must be an http:// or https:// URL");
    return url.origin + url.pathname.replace(/\/+$/, "");
  });
  if (servers.length === 0) throw new ConfigError("--server is required");
  const serverBase = servers[0]!;
  const sessionGraceMs = ms(values["session-grace-ms"], "SESSION_GRACE_MS", 60_000);

  if (values.code !== undefined) {
    for (const flag of ["state-dir", "site-code", "enrollment-key", "unattended-consent"] as const) {
      if (values[flag] !== undefined) throw new ConfigError(`--${flag} is for managed mode; attended mode (--code) does not enroll or keep state`);
    }
    const code = values.code.replace(/[\s-]/g, "");
    if (!/^[0-9A-Za-z]{1,32}$/.test(code)) throw new ConfigError(`--code must be the support code the technician gave (digits), got ${JSON.stringify(values.code)}`);
    const consent = values.consent ?? "ask";
    if (consent !== "ask" && consent !== "allow" && consent !== "deny") throw new ConfigError(`--consent must be ask, allow or deny, got ${JSON.stringify(consent)}`);
    return {
      kind: "attended",
      config: { server: serverBase, code, consent, sessionGraceMs, logLevel: pick(values["log-level"], "LOG_LEVEL") ?? "warn" },
    };
  }
  if (values.consent !== undefined) throw new ConfigError("--consent is for attended mode (--code); a managed agent uses --unattended-consent allow|deny");
  const unattendedConsent = pick(values["unattended-consent"], "UNATTENDED_CONSENT") ?? "deny";
  if (unattendedConsent !== "allow" && unattendedConsent !== "deny") throw new ConfigError(`--unattended-consent must be allow or deny, got ${JSON.stringify(unattendedConsent)}`);

  const stateDir = pick(values["state-dir"], "STATE_DIR");
  if (!stateDir) throw new ConfigError("--state-dir is required");

  const labels: AgentConfig["labels"] = {};
  if (values.company !== undefined) labels.company = values.company;
  if (values.site !== undefined) labels.site = values.site;
  if (values.department !== undefined) labels.department = values.department;
  if (values["device-type"] !== undefined) labels.device_type = values["device-type"];
  if (values.tag?.length) labels.tags = values.tag;

  return {
    kind: "run",
    config: {
      server: serverBase,
      servers,
      siteCode: pick(values["site-code"], "SITE_CODE"),
      enrollmentKey: pick(values["enrollment-key"], "ENROLLMENT_KEY"),
      stateDir,
      labels,
      enrollRetryMs: ms(values["enroll-retry-ms"], "ENROLL_RETRY_MS", 300_000),
      enrollShortRetryMs: ms(values["enroll-short-retry-ms"], "ENROLL_SHORT_RETRY_MS", 30_000),
      reconnectBaseMs: ms(values["reconnect-base-ms"], "RECONNECT_BASE_MS", 1_000),
      reconnectCapMs: ms(values["reconnect-cap-ms"], "RECONNECT_CAP_MS", 30_000),
      refusedRetryMs: ms(values["refused-retry-ms"], "REFUSED_RETRY_MS", 300_000),
      statusIntervalMs: ms(values["status-interval-ms"], "STATUS_INTERVAL_MS", 300_000),
      statusCheckMs: ms(undefined, "STATUS_CHECK_MS", 60_000),
      machineIdFile: pick(undefined, "MACHINE_ID_FILE") ?? "/etc/machine-id",
      productUuidFile: pick(undefined, "PRODUCT_UUID_FILE") ?? "/sys/class/dmi/id/product_uuid",
      logLevel: pick(values["log-level"], "LOG_LEVEL") ?? "info",
      sessionGraceMs,
      unattendedConsent,
    },
  };
}

/** `http(s)://host/base` → `ws(s)://host/base/ws/agent` (or another socket path). */
export function agentSocketUrl(server: string, path = "/ws/agent"): string {
  const u = new URL(server);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.pathname = u.pathname.replace(/\/+$/, "") + path;
  return u.toString();
}

/** `http(s)://host/base` → `ws(s)://host/base/ws/support` (attended mode). */
export const supportSocketUrl = (server: string) => agentSocketUrl(server, "/ws/support");
