import { allocatorWarning } from "./allocator.ts";
import { runClustered } from "./cluster/primary.ts";
import { loadConfig } from "./config.ts";
import { createLogger } from "./log.ts";
import { startServer } from "./server.ts";

/**
 * `npm start`: the Tether server on the embedded database (one process), or on DATABASE_URL
 * as primary or standby: it serves once it holds the primary's lease (src/cluster).
 */
const config = loadConfig();
const logger = createLogger(config.logLevel);
const allocator = allocatorWarning();
if (allocator) logger.warn(allocator);
const running = await (config.databaseUrl
  ? runClustered(config, logger, (url) => console.log(`Tether standby on ${url}: waiting for the primary's lease (API answers 503 STANDBY)`))
  : startServer({ config, logger }).then((server) => ({ server, stop: () => server.stop() }))
).catch((err: Error) => {
  // The data directory or the port in use, the database unreachable: one clear line, exit 1.
  logger.fatal({ err: err.message }, "could not start");
  console.error(`Tether could not start: ${err.message}`);
  process.exit(1);
});
const { server } = running;
logger.info({ url: server.url }, "listening");
console.log(`Tether is listening on ${server.url} (store: ${server.store.flavor}${config.databaseUrl ? ", primary" : `, data in ${config.dataDir}`})`);
if (server.firstAdminPassword) {
  // Printed once, to the console only (never to the JSON log): change it after signing in.
  console.log(`\nFirst start: sign in at ${server.url} as "admin" with password ${server.firstAdminPassword}\n(shown only this once; set TETHER_ADMIN_PASSWORD to choose it instead)\n`);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    logger.info({ signal }, "signal received");
    running.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error({ err: String(err) }, "shutdown failed");
        process.exit(1);
      },
    );
  });
}
