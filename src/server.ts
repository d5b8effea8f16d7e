import { Elysia } from "elysia";
import { RuntimeMetrics } from "./actors/metrics.ts";
import { ActorSystem } from "./actors/system.ts";
import type { KindDefinition } from "./actors/types.ts";
import type { Config } from "./config.ts";
import { errorHandling } from "./http/errors.ts";
import { health } from "./http/health.ts";
import type { Logger } from "./log.ts";
import { applySchema } from "./store/schema.ts";
import { openStore, type Store } from "./store/store.ts";

export interface ServerOptions {
  config: Config;
  logger: Logger;
  kinds: KindDefinition[];
  /** Extra route plugins, given the running system (the product's areas; tests' fixtures). */
  routes?: Array<(system: ActorSystem) => Elysia<any, any, any, any, any, any, any>>;
  /** Passed to the actor system (tests use its journal hook). */
  systemOptions?: Partial<ConstructorParameters<typeof ActorSystem>[0]>;
}

export interface RunningServer {
  url: string;
  system: ActorSystem;
  store: Store;
  /** Graceful: stop accepting, drain mailboxes, snapshot, flush the journal, close the store. */
  stop(): Promise<void>;
}

/** Opens the store, recovers every actor, and serves HTTP. */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const { config, logger } = opts;
  const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
  const schemaVersion = await applySchema(store);
  const metrics = new RuntimeMetrics();
  const system = new ActorSystem({ store, logger, onCommit: metrics.onCommit, ...opts.systemOptions });
  for (const kind of opts.kinds) system.register({ ...kind, options: { snapshotEvery: config.snapshotEvery, idleMs: config.idleMs, ...kind.options } });
  metrics.bind(system, store);
  const started = performance.now();
  const recovery = await system.start();
  logger.info({ ...recovery, ms: Math.round(performance.now() - started), store: store.flavor, schemaVersion }, "actors recovered");

  let app = new Elysia().use(errorHandling(logger)).use(health({ system, store, metrics, role: () => "primary" }));
  for (const route of opts.routes ?? []) app = app.use(route(system));
  app.listen({ port: config.port, hostname: config.host });
  const port = app.server!.port;
  const shownHost = config.host === "0.0.0.0" || config.host === "::" ? "localhost" : config.host;
  const url = `http://${shownHost}:${port}`;

  let stopping: Promise<void> | null = null;
  return {
    url,
    system,
    store,
    stop: () =>
      (stopping ??= (async () => {
        logger.info("shutting down: no new work, draining mailboxes");
        await app.stop();
        await system.stop();
        await store.close();
        logger.info("stopped cleanly");
      })()),
  };
}
