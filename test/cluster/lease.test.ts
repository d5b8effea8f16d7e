import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { Lease, LeaseLostError } from "../../src/cluster/lease.ts";
import type { Store } from "../../src/store/store.ts";
import { createTestDb, type TestDb } from "../helpers/stores.ts";

/**
 * The primary's lease (P9) on a real PostgreSQL: one holder at a time by the database's clock,
 * takeover only after expiry (or release), and fencing: a write checked against the lease
 * either commits before a takeover or fails after it.
 */
describe.skipIf(!process.env.TEST_DATABASE_URL)("lease (postgres)", () => {
  let testDb: TestDb;
  let db: { store: Store };
  beforeAll(async () => {
    testDb = await createTestDb("postgres");
    db = { store: await testDb.open() };
    await db.store.query("create table fenced_writes (holder text, at timestamptz default clock_timestamp())");
  });
  afterAll(async () => {
    await db?.store.close();
    await testDb?.destroy();
  });

  const write = (lease: Lease, holdMs = 0) =>
    db.store.transaction(async (tx) => {
      await lease.fence(tx);
      if (holdMs) await Bun.sleep(holdMs);
      await tx.query("insert into fenced_writes (holder) values ($1)", [lease.holder]);
    });

  test("one holder at a time; another takes over only after expiry, with a higher epoch; the old one can neither renew nor write", async () => {
    const a = new Lease(db.store, { name: "t1", ttlMs: 400 });
    const b = new Lease(db.store, { name: "t1", ttlMs: 400 });
    expect(await a.acquire()).toBe(true);
    expect(a.epoch).toBe(1);
    expect(await b.acquire()).toBe(false);
    expect(await a.renew()).toBe(true);
    await write(a);
    await Bun.sleep(500); // a stops renewing (a paused or partitioned primary)
    expect(await b.acquire()).toBe(true);
    expect(b.epoch).toBe(2);
    expect(await a.renew()).toBe(false);
    await expect(write(a)).rejects.toBeInstanceOf(LeaseLostError);
    await write(b);
    const rows = await db.store.query<{ holder: string }>("select holder from fenced_writes order by at");
    expect(rows.map((r) => r.holder)).toEqual([a.holder, b.holder]);
    expect((await b.current())!.holder).toBe(b.holder);
  });

  test("a write in flight holds off the takeover until it commits: no write of the old holder lands after the new one's epoch starts", async () => {
    const a = new Lease(db.store, { name: "t2", ttlMs: 300 });
    const b = new Lease(db.store, { name: "t2", ttlMs: 300 });
    expect(await a.acquire()).toBe(true);
    let committedAt = 0;
    const slow = write(a, 800).then(() => (committedAt = performance.now())); // fenced, then held open past the lease's expiry
    await Bun.sleep(450);
    expect(await b.acquire()).toBe(true); // had to wait for a's transaction to end
    const acquiredAt = performance.now();
    await slow;
    expect(committedAt).toBeGreaterThan(0);
    expect(acquiredAt).toBeGreaterThanOrEqual(committedAt);
    await expect(write(a)).rejects.toBeInstanceOf(LeaseLostError);
  });

  test("release hands over at once", async () => {
    const a = new Lease(db.store, { name: "t3", ttlMs: 60_000 });
    const b = new Lease(db.store, { name: "t3", ttlMs: 60_000 });
    expect(await a.acquire()).toBe(true);
    expect(await b.acquire()).toBe(false);
    await a.release();
    expect(await b.acquire()).toBe(true);
    expect(b.epoch).toBe(2);
  });
});
