import type { Logger } from "../log.ts";
import type { Queryable } from "../store/store.ts";

/**
 * Retention by age (S6): recordings that ENDED more than `days` days ago are deleted with their
 * chunks (`on delete cascade`). `TETHER_RECORDING_RETENTION_DAYS`, default 90; 0 keeps them
 * forever. A recording without `ended_at` is never deleted, however long ago it started: its
 * terminal may still be open and being written (deleting the row would lose the rest of its
 * output). One a dead process left open is given its `ended_at` at the next start
 * (closeAbandonedRecordings, before this process records or sweeps; factory.ts) and ages from there.
 */

const DAY_MS = 86_400_000;
/** Recordings deleted per statement: each takes its chunks with it, so keep statements short. */
const BATCH = 200;

/** Deletes the recordings that ended more than `days` days before `now` (epoch ms); returns how many. */
export async function sweepRecordings(db: Queryable, days: number, now = Date.now()): Promise<number> {
  if (!(days > 0)) return 0;
  const cutoff = now - days * DAY_MS;
  let total = 0;
  for (;;) {
    // `started_at < cutoff` adds nothing (a recording ends after it starts: the recorder and
    // closeAbandonedRecordings never write an earlier ended_at) but lets the `recordings_started`
    // index find the candidates (no index on ended_at needed); the few it reads in vain are
    // terminals open longer than the retention. A null ended_at (still open) never compares true.
    const rows = await db.query<{ id: string }>(
      `delete from recordings where id in (
         select id from recordings
          where started_at < timestamptz 'epoch' + $1::bigint * interval '1 millisecond'
            and ended_at < timestamptz 'epoch' + $1::bigint * interval '1 millisecond'
          order by started_at limit ${BATCH}
       ) returning id`,
      [cutoff],
    );
    total += rows.length;
    if (rows.length < BATCH) return total;
  }
}

/** Sweeps once now and then every `everyMs` (an hour), in the background; `stop()` ends it. */
export function startRetentionSweeper(db: Queryable, log: Logger, days: number, everyMs = 3_600_000): { stop(): void } {
  if (!(days > 0)) return { stop() {} };
  let running = false;
  const sweep = async () => {
    if (running) return;
    running = true;
    try {
      const deleted = await sweepRecordings(db, days);
      if (deleted > 0) log.info({ deleted, days }, "recordings: retention sweep");
    } catch (err) {
      log.warn({ err: err instanceof Error ? err.message : String(err) }, "recordings: retention sweep failed; retrying at the next one");
    } finally {
      running = false;
    }
  };
  const first = setTimeout(() => void sweep(), 0);
  const timer = setInterval(() => void sweep(), everyMs);
  first.unref?.();
  timer.unref?.();
  return {
    stop() {
      clearTimeout(first);
      clearInterval(timer);
    },
  };
}
