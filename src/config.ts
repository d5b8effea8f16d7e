import { resolve } from "node:path";

/** Process configuration, from the environment. Documented in README.md. */
export interface Config {
  port: number;
  host: string;
  dataDir: string;
  /** With PostgreSQL: how long the primary's lease lasts unrenewed (P9). */
  leaseTtlMs: number;
  /** The built web viewer (npm run build:web). */
  webDist: string;
  databaseUrl?: string;
  adminPassword?: string;
  logLevel: string;
  /** Proxies whose X-Forwarded-For is believed: addresses or CIDRs, comma-separated. */
  trustedProxies: string;
  /** Journal entries between snapshots, for every kind. */
  snapshotEvery: number;
  /** Idle time before an actor is passivated. */
  idleMs: number;
  /** How often agents send a heartbeat, and how long a silent one stays online. */
  heartbeatMs: number;
  offlineAfterMs: number;
  /** The listen queue's length (src/http/listen-backlog.ts; the kernel caps it at net.core.somaxconn); 0: Bun's 512. */
  listenBacklog: number;
  /** At most this many agent handshakes at once (0: no limit); unset: 1,000 on the embedded database, no limit on PostgreSQL. */
  agentHandshakes?: number;
  /** The URL agents and installers are told to use; default: the origin each request came to. */
  publicUrl?: string;
  /** The agent executable served at /api/agent/binary (built by `npm run build:agent`). */
  agentBinary: string;
  /** Sessions: how long an agent may be gone before its session ends, how long a person has to consent, and how long an unattended session waits for its agent. */
  sessionGraceMs: number;
  /** Rooms: the SSE heartbeat interval, and how many bytes a subscriber may fall behind before it is dropped. */
  roomHeartbeatMs: number;
  roomSubscriberBufferBytes: number;
  consentTimeoutMs: number;
  sessionWaitMs: number;
  /** Largest file a viewer may upload to a machine. */
  maxUploadBytes: number;
  /** Recordings older than this many days are deleted (0: kept forever). */
  recordingRetentionDays: number;
}

export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const int = (name: string, fallback: number) => {
    const raw = env[name];
    if (raw === undefined || raw === "") return fallback;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
    return n;
  };
  return {
    port: int("PORT", 8080),
    host: env.HOST || "0.0.0.0",
    dataDir: env.TETHER_DATA_DIR || "./data",
    leaseTtlMs: int("TETHER_LEASE_TTL_MS", 2_000),
    webDist: env.TETHER_WEB_DIST || resolve(import.meta.dir, "..", "dist", "web"),
    databaseUrl: env.DATABASE_URL || undefined,
    adminPassword: env.TETHER_ADMIN_PASSWORD || undefined,
    logLevel: env.LOG_LEVEL || "info",
    trustedProxies: env.TETHER_TRUSTED_PROXIES ?? "",
    snapshotEvery: int("TETHER_SNAPSHOT_EVERY", 100),
    idleMs: int("TETHER_IDLE_MS", 5 * 60_000),
    heartbeatMs: int("TETHER_HEARTBEAT_MS", 15_000),
    offlineAfterMs: int("TETHER_OFFLINE_AFTER_MS", 45_000),
    listenBacklog: int("TETHER_LISTEN_BACKLOG", 4096),
    agentHandshakes: env.TETHER_AGENT_HANDSHAKES ? int("TETHER_AGENT_HANDSHAKES", 0) : undefined,
    publicUrl: publicUrl(env.TETHER_PUBLIC_URL),
    agentBinary: env.TETHER_AGENT_BINARY || resolve(import.meta.dir, "..", "dist", "tether-agent"),
    recordingRetentionDays: int("TETHER_RECORDING_RETENTION_DAYS", 90),
    sessionGraceMs: int("TETHER_SESSION_GRACE_MS", 60_000),
    roomHeartbeatMs: int("TETHER_ROOM_HEARTBEAT_MS", 15_000),
    roomSubscriberBufferBytes: int("TETHER_ROOM_SUBSCRIBER_BUFFER_BYTES", 1024 * 1024),
    consentTimeoutMs: int("TETHER_CONSENT_TIMEOUT_MS", 120_000),
    sessionWaitMs: int("TETHER_SESSION_WAIT_MS", 10 * 60_000),
    maxUploadBytes: int("TETHER_MAX_UPLOAD_BYTES", 100 * 1024 * 1024),
  };
}

function publicUrl(raw: string | undefined): string | undefined {
  if (!raw) return undefined;
  let url;
  try {
    url = new URL(raw);
  } catch {
    throw new Error(`TETHER_PUBLIC_URL must be an http(s) URL, got ${JSON.stringify(raw)}`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error(`TETHER_PUBLIC_URL must be an http(s) URL, got ${JSON.stringify(raw)}`);
  return url.href.replace(/\/+$/, "");
}
