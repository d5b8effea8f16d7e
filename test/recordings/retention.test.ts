import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { loadConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { exportCast, parseCast, replayOutput } from "../../src/recordings/asciicast.ts";
import { createRecorder } from "../../src/recordings/factory.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { sweepRecordings } from "../../src/recordings/retention.ts";
import type { Store } from "../../src/store/store.ts";
import { eventually, FLAVORS, useSharedStore } from "../helpers/stores.ts";
import { insertSession, utf8 } from "./helpers.ts";

setDefaultTimeout(60_000);
const DAY = 86_400_000;
const HOUR = 3_600_000;

for (const flavor of FLAVORS) {
  describe(`recording retention (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));
    const chunksOf = async (ids: string[]) =>
      Number((await store.query<{ n: number }>("select count(*)::int as n from recording_chunks where recording_id::text in (select jsonb_array_elements_text($1::text::jsonb))", [JSON.stringify(ids)]))[0]!.n);
    const idsOf = async (session: string) => (await store.query<{ id: string }>("select id::text as id from recordings where session_id = $1", [session])).map((r) => r.id);

    test("recordings that ended longer ago than the retention are deleted with their chunks; newer ones stay", async () => {
      const now = Date.now();
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000 });
      const session = await insertSession(store);
      // A terminal of an hour that ended `daysAgo` days ago.
      const ended = async (daysAgo: number) => {
        const id = rec.start({ tenantId: DEFAULT_TENANT_ID, sessionId: session, machineId: null, channel: daysAgo, cols: 80, rows: 24, at: now - daysAgo * DAY - HOUR });
        rec.output(id, utf8(`output of ${id}`));
        await rec.end(id, now - daysAgo * DAY);
        return id;
      };
      const old = [await ended(120), await ended(91)];
      const kept = [await ended(89), await ended(1), await ended(0)];
      await rec.stop();
      expect(await chunksOf(old)).toBe(2);

      expect(await sweepRecordings(store, 0, now)).toBe(0); // 0: keep forever
      expect(await sweepRecordings(store, 90, now)).toBe(2);
      expect((await idsOf(session)).sort()).toEqual([...kept].sort());
      expect(await chunksOf(old)).toBe(0);
      expect(await chunksOf(kept)).toBe(3);
      expect(await sweepRecordings(store, 90, now)).toBe(0);
      // A day later the one that ended 89 days ago is past 90 days too.
      expect(await sweepRecordings(store, 90, now + 2 * DAY)).toBe(1);
    });

    test("an open recording is never deleted, however long ago it started; one that ended recently stays whatever its start", async () => {
      const now = Date.now();
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000 });
      const session = await insertSession(store);
      const start = (channel: number, daysAgo: number) =>
        rec.start({ tenantId: DEFAULT_TENANT_ID, sessionId: session, machineId: null, channel, cols: 80, rows: 24, at: now - daysAgo * DAY });
      const open = start(1, 100); // a terminal open for 100 days, still being written
      const long = start(2, 91); // open 90 days, closed yesterday
      rec.output(open, utf8("before the sweep\r\n"));
      rec.output(long, utf8("long\r\n"));
      await rec.end(long, now - DAY);
      expect(await rec.flush()).toBe(true);

      expect(await sweepRecordings(store, 90, now)).toBe(0);
      rec.output(open, utf8("after the sweep\r\n"));
      await rec.end(open);
      try {
        expect((await idsOf(session)).sort()).toEqual([open, long].sort());
        // Nothing of the open one was lost to the sweep.
        expect(replayOutput(parseCast((await exportCast(store, DEFAULT_TENANT_ID, open))!))).toBe("before the sweep\r\nafter the sweep\r\n");
        expect(rec.stats().live).toBe(0);
        // Both go once they have been over for the retention.
        await sweepRecordings(store, 90, Date.now() + 91 * DAY);
        expect(await idsOf(session)).toEqual([]);
      } finally {
        await rec.stop();
      }
    });

    test("a recording never ends before it started, whatever the wall clock did: the sweep counts on it", async () => {
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000 });
      const session = await insertSession(store);
      const now = Date.now();
      const id = rec.start({ tenantId: DEFAULT_TENANT_ID, sessionId: session, machineId: null, channel: 1, cols: 80, rows: 24, at: now });
      await rec.end(id, now - 5_000); // the clock was set back five seconds meanwhile
      await rec.stop();
      const [row] = await store.query<{ started_at: Date; ended_at: Date }>("select started_at, ended_at from recordings where id = $1", [id]);
      expect(new Date(row!.ended_at).getTime()).toBe(new Date(row!.started_at).getTime());
    });

    test("many old recordings go in batches", async () => {
      const session = await insertSession(store);
      await store.query(
        `insert into recordings (id, tenant_id, session_id, channel, cols, rows, started_at, ended_at)
         select gen_random_uuid(), $1, $2, g, 80, 24, now() - interval '400 days', now() - interval '399 days' from generate_series(1, 450) g`,
        [DEFAULT_TENANT_ID, session],
      );
      expect(await sweepRecordings(store, 90)).toBe(450);
    });

    test("createRecorder ends what a dead process left open and sweeps at start", async () => {
      const dead = new Recorder(store, silentLogger, { flushMs: 3_600_000 });
      const session = await insertSession(store);
      const open = dead.start({ tenantId: DEFAULT_TENANT_ID, sessionId: session, machineId: null, channel: 1, cols: 80, rows: 24, at: Date.now() - 10_000 });
      const ancient = dead.start({ tenantId: DEFAULT_TENANT_ID, sessionId: session, machineId: null, channel: 2, cols: 80, rows: 24, at: Date.now() - 40 * DAY });
      dead.output(open, utf8("left open"));
      expect(await dead.flush()).toBe(true);
      // `dead` is never stopped: its process "died" here.
      const recorder = await createRecorder({ store, log: silentLogger, config: { recordingRetentionDays: 30 } });
      try {
        const [row] = await store.query<{ ended_at: Date | null }>("select ended_at from recordings where id = $1", [open]);
        expect(row!.ended_at).not.toBeNull();
        await eventually(async () => (await store.query("select 1 from recordings where id = $1", [ancient])).length === 0, 5_000, "the first sweep");
      } finally {
        await recorder.stop();
      }
    });

    test("TETHER_RECORDING_RETENTION_DAYS: 90 by default, 0 allowed, garbage refused", () => {
      expect(loadConfig({}).recordingRetentionDays).toBe(90);
      expect(loadConfig({ TETHER_RECORDING_RETENTION_DAYS: "0" }).recordingRetentionDays).toBe(0);
      expect(loadConfig({ TETHER_RECORDING_RETENTION_DAYS: "30" }).recordingRetentionDays).toBe(30);
      expect(() => loadConfig({ TETHER_RECORDING_RETENTION_DAYS: "-1" })).toThrow(/TETHER_RECORDING_RETENTION_DAYS/);
    });
  });
}
