import type { Logger } from "../log.ts";
import type { Lease } from "./lease.ts";

/**
 * What a standby serves while another process holds the lease: it is alive (`/healthz`), not
 * ready (`/readyz` 503 with `role: standby`, so a load balancer sends nothing here), and every
 * other request, WebSocket upgrades included, gets 503 `STANDBY` with `Retry-After`: clients
 * retry elsewhere (agents move on to their next server).
 */
export function serveStandby(o: { host: string; port: number; lease: Lease; log: Logger }) {
  const envelope = (status: number, code: string, detail: string) =>
    Response.json({ detail, error_code: code, status_code: status, correlation_id: crypto.randomUUID() }, { status, headers: { "retry-after": "1" } });
  const server = Bun.serve({
    hostname: o.host,
    port: o.port,
    async fetch(req) {
      const path = new URL(req.url).pathname;
      if (path === "/healthz") return Response.json({ status: "ok", role: "standby" });
      if (path === "/readyz") {
        const primary = await o.lease.current().catch(() => null);
        return Response.json({ status: "standby", role: "standby", primary: primary && { epoch: primary.epoch, expires_in_ms: primary.expires_in_ms } }, { status: 503 });
      }
      if (path === "/metrics") return new Response('# HELP tether_standby 1 while this process waits for the primary\'s lease\n# TYPE tether_standby gauge\ntether_standby 1\n', { headers: { "content-type": "text/plain; version=0.0.4" } });
      return envelope(503, "STANDBY", "this server is a standby; retry on the primary (or another server of the deployment)");
    },
  });
  o.log.info({ port: server.port }, "standby: waiting for the primary's lease");
  return { port: server.port!, stop: () => server.stop(true) };
}
