import type { Socket } from "bun";

/**
 * A loopback TCP proxy whose current connections can be switched to a black hole: every byte is
 * dropped both ways and no FIN or RST is passed on, like a NAT that forgot the flow or a server
 * host that lost power. Connections opened afterwards pass normally (the path came back).
 */
export interface BlackholeProxy {
  port: number;
  url: string;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Silences every connection open now. */
  blackholeOpen(): void;
  stop(): void;
}

interface Link {
  upstream?: Socket<unknown>;
  pending: Uint8Array[];
  dead: boolean;
}

export function startBlackholeProxy(target: { hostname: string; port: number }): BlackholeProxy {
  const links = new Set<Link>();
  let accepted = 0;
  const server = Bun.listen<Link>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        accepted++;
        const link: Link = { pending: [], dead: false };
        client.data = link;
        links.add(link);
        void Bun.connect<Link>({
          hostname: target.hostname,
          port: target.port,
          data: link,
          socket: {
            open(up) {
              link.upstream = up;
              for (const b of link.pending.splice(0)) up.write(b);
            },
            data(_up, bytes) {
              if (!link.dead) client.write(bytes);
            },
            close() {
              if (!link.dead) client.end();
            },
          },
        }).catch(() => client.end());
      },
      data(client, bytes) {
        const link = client.data;
        if (link.dead) return;
        if (link.upstream) link.upstream.write(bytes);
        else link.pending.push(new Uint8Array(bytes));
      },
      close(client) {
        const link = client.data;
        links.delete(link);
        if (!link.dead) link.upstream?.end();
      },
    },
  });
  return {
    port: server.port,
    url: `http://127.0.0.1:${server.port}`,
    get accepted() {
      return accepted;
    },
    blackholeOpen() {
      for (const link of links) link.dead = true;
    },
    stop() {
      server.stop(true);
    },
  };
}
