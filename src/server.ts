import { Elysia } from "elysia";
import { RuntimeMetrics } from "./actors/metrics.ts";
import { ActorSystem } from "./actors/system.ts";
import type { KindDefinition } from "./actors/types.ts";
import type { Config } from "./config.ts";
import { ClientIpResolver } from "./auth/client-ip.ts";
import { Ed25519Verifier } from "./auth/ed25519-verifier.ts";
import { CredentialVerifier } from "./auth/credentials.ts";
import { ensureFirstAdmin } from "./auth/first-admin.ts";
import { Limiter } from "./auth/rate-limit.ts";
import { machineKind } from "./actors/machine.ts";
import { machineEffects, Projections } from "./machines/presence.ts";
import { flushAudit } from "./audit/audit.ts";
import { Relay } from "./relay/relay.ts";
import { createRecorder } from "./recordings/factory.ts";
import { Serial } from "./actors/serial.ts";
import { sessionEffects } from "./sessions/effects.ts";
import { sessionKind } from "./sessions/session.ts";
import { ViewerTokens } from "./sessions/viewer-tokens.ts";
import { roomEffects } from "./rooms/effects.ts";
import { RoomHub } from "./rooms/hub.ts";
import { MessageLog } from "./rooms/message-log.ts";
import { roomKind } from "./rooms/room.ts";
import { Rooms } from "./rooms/service.ts";
import { CLOSE, MAX_AGENT_FRAME } from "./protocol/agent.ts";
import { AgentConnections } from "./http/ws/agent-connections.ts";
import { api } from "./http/api.ts";
import { webViewer } from "./http/web.ts";
import type { AppDeps } from "./http/deps.ts";
import { storableInput } from "./http/storable-input.ts";
import { errorHandling } from "./http/errors.ts";
import { health } from "./http/health.ts";
import type { Logger } from "./log.ts";
import { widenListenBacklog } from "./http/listen-backlog.ts";
import { applySchema } from "./store/schema.ts";
import { openStore, type Queryable, type Store } from "./store/store.ts";

export interface ServerOptions {
  config: Config;
  logger: Logger;
  /** Kinds beyond the product's own (tests' fixtures). */
  kinds?: KindDefinition[];
  /** Extra route plugins, given the running system (the product's areas; tests' fixtures). */
  routes?: Array<(system: ActorSystem) => Elysia<any, any, any, any, any, any, any>>;
  /** Passed to the actor system (tests use its journal hook). */
  systemOptions?: Partial<ConstructorParameters<typeof ActorSystem>[0]>;
  /**
   * With PostgreSQL: the primary's lease this process holds (src/cluster). Every journal commit
   * is fenced by it; `onLeaseLost` is called the moment a commit finds it gone.
   */
  lease?: { fence(tx: Queryable): Promise<void> };
  onLeaseLost?: (err: Error) => void;
  /** With a lease: whether it was renewed recently (/readyz is 503 otherwise). */
  leaseFresh?: () => boolean;
}

export interface RunningServer {
  url: string;
  /** The first admin's generated password, on the first start without TETHER_ADMIN_PASSWORD. */
  firstAdminPassword?: string;
  system: ActorSystem;
  store: Store;
  relay: Relay;
  viewerTokens: ViewerTokens;
  rooms: Rooms;
  /** The live agent sockets (their sweep, and the writes flushed at shutdown). */
  connections: AgentConnections;
  /** Graceful: stop accepting, drain mailboxes, snapshot, flush the journal, close the store. */
  stop(): Promise<void>;
}

/** Opens the store, recovers every actor, and serves HTTP. */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { config, logger } = opts;
  const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
  const schemaVersion = await applySchema(store);
  const metrics = new RuntimeMetrics();
  const lease = opts.lease;
  const fence = lease
    ? async (tx: Queryable) => {
      try {
        await lease.fence(tx);
      } catch (err) {
        if ((err as { code?: string }).code === "LEASE_LOST") opts.onLeaseLost?.(err as Error);
        throw err;
      }
    }
    : undefined;
  const system = new ActorSystem({ store, logger, onCommit: metrics.onCommit, fence, ...opts.systemOptions });
  const connections = new AgentConnections(store, config.offlineAfterMs);
  const projections = new Projections(store, logger, fence);
  const sessionWrites = new Serial();
  const recorder = await createRecorder({ store, log: logger, config });
  const relay = new Relay(system, recorder, logger, { slowViewerBytes: 4 * 1024 * 1024, maxUploadBytes: config.maxUploadBytes });
  const hub = new RoomHub(store, logger, { maxBacklogBytes: config.roomSubscriberBufferBytes });
  const roomWrites = new Serial();
  const rooms = new Rooms(system, store, hub, new MessageLog(store, (room, message, persist) => hub.publish(room, message, persist), undefined, undefined, fence), roomWrites);
  // Session chat goes through the session's room; its messages come back to the session's viewers and agent.
  hub.onMessage = (roomId, message) => relay.deliverChat(roomId, message);
  relay.chat = (sessionId, tenantId, from, text) => rooms.sessionChat(sessionId, tenantId, from, text);
  const kinds = [
    machineKind(machineEffects(store, connections, logger, projections)),
    sessionKind(sessionEffects(store, relay, logger, sessionWrites, rooms, fence)),
    roomKind(roomEffects(store, hub, roomWrites)),
    ...(opts.kinds ?? []),
  ];
  for (const kind of kinds) system.register({ ...kind, options: { snapshotEvery: config.snapshotEvery, idleMs: config.idleMs, ...kind.options } });
  metrics.bind(system, store);
  const started = performance.now();
  const recovery = await system.start();
  logger.info({ ...recovery, ms: Math.round(performance.now() - started), store: store.flavor, schemaVersion }, "actors recovered");
  // No agent is connected to a process that just started: machines come back offline until
  // their agents reconnect (which they do on their own).
  for (const { id } of await store.query<{ id: string }>("select machine_id as id from machine_presence where status = 'online'")) system.send(`machine/${id}`, { type: "server.restarted" });
  // Sessions whose agent was connected to the old process start their grace period now; the
  // channels and viewers of live sessions died with the old process (src/sessions/session.ts).
  for (const { id } of await store.query<{ id: string }>("select id from sessions where ended_at is null and state in ('waiting_for_agent', 'active', 'awaiting_consent', 'agent_lost')")) system.send(`session/${id}`, { type: "server.restarted" });
  connections.start();

  const viewerTokens = await ViewerTokens.load(store);
  const signatures = new Ed25519Verifier(logger);
  const deps: AppDeps = {
    config, store, system, log: logger,
    verifier: new CredentialVerifier(store),
    signatures,
    ips: new ClientIpResolver(config.trustedProxies),
    connections,
    relay,
    viewerTokens,
    sessionWrites,
    recorder,
    rooms,
    limiters: {
      loginByIp: new Limiter({ windowMs: 60_000, maxPerWindow: 30, maxFailures: 20, lockoutMs: 15 * 60_000 }),
      loginByUser: new Limiter({ windowMs: 60_000, maxPerWindow: 10, maxFailures: 10, lockoutMs: 15 * 60_000 }),
      enroll: new Limiter({ windowMs: 60_000, maxPerWindow: 60, maxFailures: 20, lockoutMs: 15 * 60_000 }),
      // Support-code validation (S2): 10 failures from one address lock it out for 15 minutes.
      supportCode: new Limiter({ windowMs: 60_000, maxPerWindow: 30, maxFailures: 10, lockoutMs: 15 * 60_000 }),
      // The current password given to a self-service change, per user: 10 failures in a row lock
      // those checks out for 15 minutes (a stolen session must not brute-force the password).
      passwordCheck: new Limiter({ windowMs: 60_000, maxPerWindow: 30, maxFailures: 10, lockoutMs: 15 * 60_000 }),
    },
  };

  // Bun caps WebSocket frames server-wide: the agent's 4 MiB; smaller caps are per socket.
  let app = new Elysia({ websocket: { maxPayloadLength: MAX_AGENT_FRAME } })
    .use(errorHandling(logger))
    .use(storableInput())
    .use(health({ system, store, metrics, role: () => "primary", leaseFresh: opts.leaseFresh }))
    .use(api(deps))
    .use(webViewer(config.webDist));
  for (const route of opts.routes ?? []) app = app.use(route(system));
  let stopping: Promise<void> | null = null;
  const stop = () =>
    (stopping ??= (async () => {
      logger.info("shutting down: no new work, draining mailboxes");
      connections.stop(CLOSE.SERVER_STOPPING, "server stopping");
      relay.stop();
      hub.closeAll();
      if (app.server) await app.stop();
      signatures.close();
      await recorder.stop();
      await system.stop();
      // Batched writes still waiting: presence, keys' last use, audit events.
      await projections.flush();
      await connections.flush();
      await flushAudit(store);
      await store.close();
      logger.info("stopped cleanly");
    })());

  try {
    // Not Elysia's default `reusePort: true`: with it a second server on the same port starts
    // without a word and the kernel splits the connections between the two.
    app.listen({ port: config.port, hostname: config.host, reusePort: false });
  } catch (err) {
    await stop();
    throw err;
  }
  widenListenBacklog(app.server!.port!, config.listenBacklog, logger);
  // Only once the port is ours: a start that fails on the port leaves no admin whose generated
  // password nobody saw.
  const firstAdmin = await ensureFirstAdmin(store, logger, config.adminPassword).catch(async (err: Error) => {
    await stop();
    throw err;
  });
  const port = app.server!.port;
  const shownHost = config.host === "0.0.0.0" || config.host === "::" ? "localhost" : config.host;
  const url = `http://${shownHost}:${port}`;
  return { url, firstAdminPassword: firstAdmin.generated, system, store, relay, viewerTokens, rooms, connections, stop };
}
