import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { silentLogger } from "../../src/log.ts";
import { dataFrame } from "../../src/protocol/frames.ts";
import { getRecording } from "../../src/recordings/recordings.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { Relay } from "../../src/relay/relay.ts";
import type { Queryable, Store } from "../../src/store/store.ts";
import { createTestDb, eventually, FLAVORS, type TestDb } from "../helpers/stores.ts";
import { FlakyStore, insertSession, utf8 } from "./helpers.ts";

setDefaultTimeout(60_000);

const HOUR = 3_600_000;
const T = DEFAULT_TENANT_ID;

/** A store whose transactions wait at a gate: a database that is up but slower than the output. */
class GatedStore extends FlakyStore {
  private open: Promise<void> = Promise.resolve();
  private release: () => void = () => {};
  hold(): void {
    this.open = new Promise((r) => (this.release = r));
  }
  let(): void {
    this.release();
  }
  override async transaction<R>(fn: (tx: Queryable) => Promise<R>): Promise<R> {
    await this.open;
    return super.transaction(fn);
  }
}

/** An agent's link as the relay sees it, counting pauses and resumes. */
function agentLink() {
  const link = { paused: false, pauses: 0, resumes: 0, sent: 0,
    send: (_f: Uint8Array) => ((link.sent += 1), 1), buffered: () => 0, close: () => {},
    pause: () => void ((link.paused = true), link.pauses++),
    resume: () => void ((link.paused = false), link.resumes++),
  };
  return link;
}

for (const flavor of FLAVORS) {
  describe(`recording backpressure (${flavor})`, () => {
    let db: TestDb;
    let store: Store;
    const recorders: Recorder[] = [];
    const chunk = utf8("x".repeat(1024));

    beforeAll(async () => {
      db = await createTestDb(flavor);
      store = await db.open();
    });
    afterAll(async () => {
      for (const r of recorders) await r.stop();
      await store?.close();
      await db?.destroy();
    });

    test("a recording over its high-water mark asks its source to pause until a flush catches it up; nothing is dropped", async () => {
      const gated = new GatedStore(store);
      const rec = new Recorder(gated, silentLogger, { flushMs: HOUR, chunkBytes: 1024, flushAtBytes: 2048, highWaterBytes: 8 * 1024, maxPendingBytes: 64 * 1024 });
      recorders.push(rec);
      const id = rec.start({ tenantId: T, sessionId: await insertSession(store), machineId: null, channel: 1, cols: 80, rows: 24 });
      gated.hold();
      let accepted = 0;
      while (rec.output(id, chunk) !== false) accepted++;
      // Under the mark every frame was accepted; the one that crossed it says "pause".
      expect(accepted).toBeGreaterThanOrEqual(7);
      expect(accepted).toBeLessThan(12);
      expect(rec.behind(id)).toBe(true);
      let flushed = 0;
      rec.onFlushed(() => flushed++);
      gated.let();
      await eventually(() => flushed > 0 && !rec.behind(id), 5_000, "a flush, and caught up");
      await rec.end(id);
      expect(rec.stats().droppedBytes).toBe(0);
      expect(Number((await getRecording(store, T, id))!.bytes)).toBe((accepted + 1) * chunk.length);
    });

    test("a failing database never pushes back (best effort: the session is not stalled)", async () => {
      const flaky = new FlakyStore(store);
      const rec = new Recorder(flaky, silentLogger, { flushMs: HOUR, chunkBytes: 1024, highWaterBytes: 4 * 1024, maxPendingBytes: 16 * 1024 });
      recorders.push(rec);
      const id = rec.start({ tenantId: T, sessionId: await insertSession(store), machineId: null, channel: 1, cols: 80, rows: 24 });
      flaky.down = true;
      expect(await rec.flush()).toBe(false);
      for (let i = 0; i < 64; i++) expect(rec.output(id, chunk)).toBe(true);
      expect(rec.behind(id)).toBe(false);
      expect(rec.stats().droppedBytes).toBeGreaterThan(0); // the memory cap did its job instead
      flaky.down = false;
      await rec.end(id);
    });

    test("the relay stops reading an agent whose terminal's recording is behind, and resumes it after the flush", async () => {
      const gated = new GatedStore(store);
      const rec = new Recorder(gated, silentLogger, { flushMs: HOUR, chunkBytes: 1024, flushAtBytes: 2048, highWaterBytes: 8 * 1024, maxPendingBytes: 64 * 1024 });
      recorders.push(rec);
      const system = { send: () => {}, ask: async () => ({ reply: { ok: true } }) } as never;
      const relay = new Relay(system, rec, silentLogger);
      const link = agentLink();
      const sessionId = await insertSession(store);
      relay.addAgent("conn-1", link, null);
      relay.attach(sessionId, { tenantId: T, machineId: null }, "conn-1");
      relay.openRoute({ sessionId, tenantId: T, machineId: null, conn: "conn-1", viewerId: "v", req: "r", open: { t: "ch.open", session: sessionId, channel: 7, type: "term", cols: 80, rows: 24 } });
      gated.hold();
      for (let i = 0; i < 12; i++) relay.fromAgent("conn-1", dataFrame(7, chunk));
      expect(link.paused).toBe(true);
      expect(link.pauses).toBe(1);
      expect(relay.stats.recorderPauses).toBe(1);
      gated.let();
      await eventually(() => !link.paused, 5_000, "resumed");
      expect(link.resumes).toBe(1);
      relay.removeAgent("conn-1");
    });

    test("a database that hangs does not hang the agent: reading resumes after MAX_RECORDER_PAUSE_MS", async () => {
      const gated = new GatedStore(store);
      const rec = new Recorder(gated, silentLogger, { flushMs: HOUR, chunkBytes: 1024, flushAtBytes: 2048, highWaterBytes: 4 * 1024, maxPendingBytes: 64 * 1024 });
      recorders.push(rec);
      const relay = new Relay({ send: () => {}, ask: async () => ({ reply: { ok: true } }) } as never, rec, silentLogger);
      const link = agentLink();
      const sessionId = await insertSession(store);
      relay.addAgent("conn-2", link, null);
      relay.attach(sessionId, { tenantId: T, machineId: null }, "conn-2");
      relay.openRoute({ sessionId, tenantId: T, machineId: null, conn: "conn-2", viewerId: "v", req: "r", open: { t: "ch.open", session: sessionId, channel: 9, type: "term", cols: 80, rows: 24 } });
      gated.hold();
      for (let i = 0; i < 8; i++) relay.fromAgent("conn-2", dataFrame(9, chunk));
      expect(link.paused).toBe(true);
      const t0 = performance.now();
      await eventually(() => !link.paused, 5_000, "resumed by the deadline");
      expect(performance.now() - t0).toBeGreaterThan(1_500);
      gated.let();
      relay.removeAgent("conn-2");
    });
  });
}
