import { parseArgs } from "node:util";
import type { z } from "zod";
import type { EnrollLabels } from "../protocol/machines.ts";

/**
 * The agent's configuration: command-line flags, each with an environment fallback
 * (TETHER_AGENT_*), so a systemd unit can carry it in an EnvironmentFile readable by root only.
 * The enrollment key is needed on the first run only and is never written to the state dir.
 */
export interface AgentConfig {
  server: string;
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
}

export const USAGE = `tether-agent: the Tether agent for managed machines

Usage:
  tether-agent --server <url> --state-dir <dir> [--site-code <code> --enrollment-key <cek_…>] [labels]

The first run generates the machine's Ed25519 key pair, enrolls with the site's enrollment key
and stores its agent key in the state dir (mode 0600); later runs connect with what is stored
and never enroll again (the site code and enrollment key are then ignored).

Options (environment fallback in brackets):
  --server <url>            Tether server, http(s)://host[:port]           [TETHER_AGENT_SERVER]
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
  --log-level <level>       pino level, default info                       [TETHER_AGENT_LOG_LEVEL]
  --code <123456>           attended mode with a support code (not implemented yet)
  --help, --version
`;

export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

export type Parsed = { kind: "help" } | { kind: "version" } | { kind: "run"; config: AgentConfig };

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
        code: { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "v" },
      },
    }));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  if (values.help) return { kind: "help" };
  if (values.version) return { kind: "version" };
  if (values.code !== undefined) throw new ConfigError("attended mode (--code) is not implemented yet; use managed mode (--site-code, --enrollment-key)");

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
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    throw new ConfigError(`--server is not a URL: ${JSON.stringify(server)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new ConfigError("--server must be an http:// or https:// URL");
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
      server: url.origin + url.pathname.replace(/\/+$/, ""),
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
    },
  };
}

/** `http(s)://host/base` → `ws(s)://host/base/ws/agent`. */
export function agentSocketUrl(server: string): string {
  const u = new URL(server);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.pathname = u.pathname.replace(/\/+$/, "") + "/ws/agent";
  return u.toString();
}
