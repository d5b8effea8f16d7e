import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { loadConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { createRecorder } from "../../src/recordings/factory.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { sweepRecordings } from "../../src/recordings/retention.ts";
import type { Store } from "../../src/store/store.ts";
import { eventually, FLAVORS, useSharedStore } from "../helpers/stores.ts";
import { insertSession, utf8 } from "./helpers.ts";

setDefaultTimeout(60_000);
const DAY = 86_400_000;

for (const flavor of FLAVORS) {
  describe(`recording retention (${flavor})`, () => {
    let store: Store;
    useSharedStore(flavor, (s) => (store = s));

    test("recordings older than the retention are deleted with their chunks; newer ones stay", async () => {
      const now = Date.now();
      const rec = new Recorder(store, silentLogger, { flushMs: 3_600_000 });
      const session = await insertSession(store);
      const at = (daysAgo: number) => rec.start({ tenantId: DEFAULT_TENANT_ID, sessionId: session, machineId: null, channel: daysAgo, cols: 80, rows: 24, at: now - daysAgo * DAY });
      const old = [at(120), at(91)];
      const kept = [at(89), at(1), at(0)];
      for (const id of [...old, ...kept]) rec.output(id, utf8(`output of ${id}`));
      await rec.stop();
      const chunksOf = async (ids: string[]) =>
        Number((await store.query<{ n: number }>("select count(*)::int as n from recording_chunks where recording_id::text in (select jsonb_array_elements_text($1::text::jsonb))", [JSON.stringify(ids)]))[0]!.n);
      expect(await chunksOf(old)).toBe(2);

      expect(await sweepRecordings(store, 0, now)).toBe(0); // 0: keep forever
      expect(await sweepRecordings(store, 90, now)).toBe(2);
      const left = (await store.query<{ id: string }>("select id::text as id from recordings where session_id = $1", [session])).map((r) => r.id);
      expect(left.sort()).toEqual([...kept].sort());
      expect(await chunksOf(old)).toBe(0);
      expect(await chunksOf(kept)).toBe(3);
      expect(await sweepRecordings(store, 90, now)).toBe(0);
      // A day later the 89-day-old one is past 90 days too.
      expect(await sweepRecordings(store, 90, now + 2 * DAY)).toBe(1);
    });

    test("many old recordings go in batches", async () => {
      const session = await insertSession(store);
      await store.query(
        `insert into recordings (id, tenant_id, session_id, channel, cols, rows, started_at)
         select gen_random_uuid(), $1, $2, g, 80, 24, now() - interval '400 days' from generate_series(1, 450) g`,
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
