import { describe, expect, test } from "bun:test";
import { Inventory } from "../../src/protocol/agent.ts";
import { collectInventory, gatherInventory, loggedOnUsers } from "../../src/agent/inventory.ts";

/**
 * `who` runs beside the event loop, not on it: the agent collects the inventory every minute
 * and at each proof, and a slow `who` must not stall heartbeats, the liveness check or sessions.
 */
const FAKE_WHO = ["sh", "-c", "sleep 0.6; printf 'alice    pts/0  2030-01-01 10:00\\nbob      tty1   2030-01-01 09:00\\nalice    pts/1  2030-01-01 11:00\\n'"];

describe("logged-on users", () => {
  test("the event loop keeps running while `who` does; its users are parsed and deduplicated", async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 50);
    const started = Date.now();
    try {
      expect(await loggedOnUsers(FAKE_WHO)).toEqual(["alice", "bob"]);
    } finally {
      clearInterval(timer);
    }
    expect(Date.now() - started).toBeGreaterThanOrEqual(550);
    expect(ticks).toBeGreaterThanOrEqual(6); // a blocking spawn would have allowed none
  });

  test("a `who` that hangs is killed at its timeout; a failing or missing one gives no users", async () => {
    const started = Date.now();
    expect(await loggedOnUsers(["sleep", "10"], 200)).toEqual([]);
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(await loggedOnUsers(["sh", "-c", "echo carol; exit 1"])).toEqual([]);
    expect(await loggedOnUsers(["/nonexistent/who"])).toEqual([]);
  });

  test("the gathered inventory is the synchronous probes plus `who`'s users, and valid", async () => {
    const [gathered, users] = await Promise.all([gatherInventory(), loggedOnUsers()]);
    expect(Inventory.safeParse(gathered).success).toBe(true);
    expect(gathered.users).toEqual(users);
    const probes = collectInventory(users);
    expect({ ...gathered, uptime_s: 0, disks: [] }).toEqual({ ...probes, uptime_s: 0, disks: [] });
  });
});
