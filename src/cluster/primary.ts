import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import { startServer, type RunningServer } from "../server.ts";
import { applySchema } from "../store/schema.ts";
import { openStore } from "../store/store.ts";
import { Lease, LeaseLostError } from "./lease.ts";
import { serveStandby } from "./standby.ts";

export interface Clustered {
  server: RunningServer;
  /** Graceful: stop serving, then release the lease so a standby takes over at once. */
  stop(): Promise<void>;
}

/**
 * A process on PostgreSQL (P9): a standby until it holds the primary's lease, then the full
 * server, fenced by the lease. Renewed every quarter of its time to live; the moment it is
 * lost (a renewal says so, the database stays unreachable past its expiry, or a journal commit
 * finds it gone) the process exits at once: it writes nothing more, and its supervisor starts
 * it again as a standby. `onStandby` is told where the standby listens.
 */
export async function runClustered(config: Config, log: Logger, onStandby: (url: string) => void): Promise<Clustered> {
  const leaseStore = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
  await applySchema(leaseStore);
  const lease = new Lease(leaseStore, { ttlMs: config.leaseTtlMs });
  let port = config.port;
  if (!(await lease.acquire())) {
    const standby = serveStandby({ host: config.host, port, lease, log });
    port = standby.port;
    onStandby(`http://${config.host === "0.0.0.0" || config.host === "::" ? "localhost" : config.host}:${port}`);
    while (!(await lease.acquire().catch(() => false))) await Bun.sleep(Math.max(50, config.leaseTtlMs / 8));
    standby.stop();
  }
  log.info({ epoch: lease.epoch, holder: lease.holder }, "holding the primary's lease: recovering actors");

  const lost = (why: Error) => {
    // Exit rather than stop gracefully: nothing more may be written, not even a snapshot.
    log.fatal({ err: why.message, epoch: lease.epoch }, "lost the primary's lease; exiting so a standby serves");
    process.exit(70);
  };
  let lastRenewed = Date.now();
  const renewal = setInterval(() => {
    lease.renew().then(
      (ok) => (ok ? (lastRenewed = Date.now()) : lost(new LeaseLostError("the lease expired or was taken over"))),
      (err: Error) => {
        log.warn({ err: err.message }, "lease renewal failed; retrying");
        if (Date.now() - lastRenewed > config.leaseTtlMs) lost(new LeaseLostError(`could not renew the lease within its ${config.leaseTtlMs} ms: ${err.message}`));
      },
    );
  }, Math.max(50, Math.floor(config.leaseTtlMs / 4)));

  const server = await startServer({ config: { ...config, port }, logger: log, lease, onLeaseLost: lost });
  return {
    server,
    stop: async () => {
      clearInterval(renewal);
      await server.stop();
      await lease.release().catch((err: Error) => log.warn({ err: err.message }, "could not release the lease; a standby takes over when it expires"));
      await leaseStore.close();
    },
  };
}
