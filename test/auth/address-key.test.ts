import { describe, expect, test } from "bun:test";
import { addressKey } from "../../src/auth/client-ip.ts";

/** The address an agent socket's limits count against (connects in flight, refusal audits). */
describe("addressKey", () => {
  test("IPv4 is its own key", () => {
    expect(addressKey("192.0.2.7")).toBe("192.0.2.7");
  });

  test("IPv6 counts by its /64, however it is written", () => {
    const key = "2001:db8:1:2::/64";
    expect(addressKey("2001:db8:1:2::1")).toBe(key);
    expect(addressKey("2001:0db8:0001:0002:ffff:0:0:9")).toBe(key);
    expect(addressKey("2001:db8:1:2:a:b:c:d%eth0")).toBe(key);
    expect(addressKey("2001:db8:1:3::1")).not.toBe(key);
    expect(addressKey("::1")).toBe("0:0:0:0::/64");
  });

  test("a NAT64 address (64:ff9b::/96) counts as the IPv4 host it embeds, not as the translator's /64", () => {
    expect(addressKey("64:ff9b::c000:207")).toBe("192.0.2.7");
    expect(addressKey("64:ff9b::192.0.2.7")).toBe("192.0.2.7");
    expect(addressKey("64:ff9b::198.51.100.1")).toBe("198.51.100.1");
    expect(addressKey("64:ff9b::c000:207")).not.toBe(addressKey("64:ff9b::c000:208"));
    // Outside the /96 (64:ff9b:1::/48 is a local-use prefix): an IPv6 /64 as usual.
    expect(addressKey("64:ff9b:1::c000:207")).toBe("64:ff9b:1:0::/64");
  });
});
