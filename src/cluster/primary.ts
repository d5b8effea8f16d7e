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
  let renewing = false;
  const renewal = setInterval(() => {
    // Checked on every tick, so a renewal that hangs (a dead connection) cannot keep a stale
    // primary alive past the lease's time to live.
    if (Date.now() - lastRenewed > config.leaseTtlMs) return lost(new LeaseLostError(`the lease was not renewed within its ${config.leaseTtlMs} ms`));
    if (renewing) return;
    renewing = true;
    lease.renew().then(
      (ok) => (ok ? (lastRenewed = Date.now()) : lost(new LeaseLostError("the lease expired or was taken over"))),
      (err: Error) => log.warn({ err: err.message }, "lease renewal failed; retrying"),
    ).finally(() => (renewing = false));
  }, Math.max(50, Math.floor(config.leaseTtlMs / 4)));
  // Ready only while the lease is fresh: a load balancer stops sending work before it expires.
  const leaseFresh = () => Date.now() - lastRenewed < config.leaseTtlMs / 2;

  const server = await startServer({ config: { ...config, port }, logger: log, lease, onLeaseLost: lost, leaseFresh });
  return {
    server,
    stop: async () => {
      // Renewals go on while the server drains and flushes: its last writes are fenced too.
      await server.stop();
      clearInterval(renewal);
      await lease.release().catch((err: Error) => log.warn({ err: err.message }, "could not release the lease; a standby takes over when it expires"));
      await leaseStore.close();
    },
  };
}
