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

  /**
   * Whether the request reached the client-facing proxy over HTTPS: only when the socket peer is
   * a trusted proxy and its X-Forwarded-Proto (any entry of a comma-separated chain) says https.
   * From anyone else the header is ignored.
   */
  forwardedHttps(peer: string | undefined, forwardedProto: string | null): boolean {
    if (!this.any || !forwardedProto || !this.isTrusted(normalize(peer ?? ""))) return false;
    return forwardedProto.split(",").some((p) => p.trim().toLowerCase() === "https");
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

/**
 * The address that limits count against (rate limits, lockouts, connects in flight): IPv4 as it is, IPv6 by its /64 (one host usually
 * holds a whole /64 and can pick any address in it). An address of the NAT64 well-known prefix
 * (64:ff9b::/96, RFC 6052) stands for the IPv4 host it embeds: keyed by its /64, every IPv4
 * client behind the translator would share one budget.
 */
export function addressKey(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  const [head = "", tail] = ip.split("%")[0]!.split("::");
  const groups = (s: string) => (s ? s.split(":").flatMap((g) => (g.includes(".") ? dottedGroups(g) : [g])) : []);
  const h = groups(head);
  const full = tail === undefined ? h : [...h, ...Array<string>(Math.max(0, 8 - h.length - groups(tail).length)).fill("0"), ...groups(tail)];
  const n = full.map((g) => parseInt(g, 16));
  if (n[0] === 0x64 && n[1] === 0xff9b && n.slice(2, 6).every((g) => g === 0)) {
    return [n[6]! >> 8, n[6]! & 0xff, n[7]! >> 8, n[7]! & 0xff].join(".");
  }
  return `${n.slice(0, 4).map((g) => g.toString(16)).join(":")}::/64`;
}

/** The two 16-bit groups (hex) of an IPv6 address's dotted IPv4 tail. */
function dottedGroups(dotted: string): string[] {
  const [a = 0, b = 0, c = 0, d = 0] = dotted.split(".").map(Number);
  return [((a << 8) | b).toString(16), ((c << 8) | d).toString(16)];
}
