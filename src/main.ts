import { loadConfig } from "./config.ts";
import { createLogger } from "./log.ts";
import { startServer } from "./server.ts";

/** `npm start`: the Tether server on the embedded database, or on DATABASE_URL. */
const config = loadConfig();
const logger = createLogger(config.logLevel);
const server = await startServer({ config, logger });
logger.info({ url: server.url }, "listening");
console.log(`Tether is listening on ${server.url} (store: ${server.store.flavor}${config.databaseUrl ? "" : `, data in ${config.dataDir}`})`);
if (server.firstAdminPassword) {
  // Printed once, to the console only (never to the JSON log): change it after signing in.
  console.log(`\nFirst start: sign in at ${server.url} as "admin" with password ${server.firstAdminPassword}\n(shown only this once; set TETHER_ADMIN_PASSWORD to choose it instead)\n`);
}

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  process.on(signal, () => {
    logger.info({ signal }, "signal received");
    server.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error({ err: String(err) }, "shutdown failed");
        process.exit(1);
      },
    );
  });
}
