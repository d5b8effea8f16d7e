import { BlockList, isIP } from "node:net";

/**
 * The client's address: the socket peer, or, only when that peer is a trusted proxy (from
 * TETHER_TRUSTED_PROXIES, comma-separated addresses or CIDRs), the right-most address in
 * X-Forwarded-For that is not itself a trusted proxy.
 */
export class ClientIpResolver {
  private readonly trusted = new BlockList();
  private readonly any: boolean;

  constructor(spec = "") {
    const entries = spec.split(",").map((s) => s.trim()).filter(Boolean);
    for (const entry of entries) {
      const [addr, bits] = entry.split("/");
      const family = isIP(addr ?? "") === 6 ? "ipv6" : "ipv4";
      if (!addr || !isIP(addr)) throw new Error(`TETHER_TRUSTED_PROXIES: ${JSON.stringify(entry)} is not an address or CIDR`);
      if (bits !== undefined) this.trusted.addSubnet(addr, Number(bits), family);
      else this.trusted.addAddress(addr, family);
    }
    this.any = entries.length > 0;
  }

  resolve(peer: string | undefined, forwardedFor: string | null): string {
    const ip = normalize(peer ?? "");
    if (!this.any || !forwardedFor || !this.isTrusted(ip)) return ip || "unknown";
    const hops = forwardedFor.split(",").map((s) => normalize(s.trim())).filter((s) => isIP(s));
    for (let i = hops.length - 1; i >= 0; i--) if (!this.isTrusted(hops[i]!)) return hops[i]!;
    return ip;
  }

  private isTrusted(ip: string): boolean {
    const family = isIP(ip);
    if (!family) return false;
    return this.trusted.check(ip, family === 6 ? "ipv6" : "ipv4");
  }
}

/** IPv4-mapped IPv6 (::ffff:1.2.3.4) as plain IPv4. */
function normalize(ip: string): string {
  return ip.startsWith("::ffff:") && isIP(ip.slice(7)) === 4 ? ip.slice(7) : ip;
}
