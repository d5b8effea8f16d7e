import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import type { Store } from "../store/store.ts";
import { Recorder, type RecorderOptions } from "./recorder.ts";
import { closeAbandonedRecordings } from "./recordings.ts";
import { startRetentionSweeper } from "./retention.ts";

/**
 * The process's Recorder, for src/server.ts: first ends the recordings a previous process left
 * open (it died, or stopped without ending them), then records, with the retention sweeper
 * running beside it. `recorder.stop()` (graceful shutdown, before the store closes) stops both.
 */
export async function createRecorder(deps: { store: Store; log: Logger; config: Pick<Config, "recordingRetentionDays"> }, opts: RecorderOptions = {}): Promise<Recorder> {
  const { store, log, config } = deps;
  const closed = await closeAbandonedRecordings(store, Date.now());
  if (closed > 0) log.info({ closed }, "recordings: ended the recordings a previous process left open");
  const recorder = new Recorder(store, log, opts);
  const sweeper = startRetentionSweeper(store, log, config.recordingRetentionDays);
  recorder.whenStopped(() => sweeper.stop());
  return recorder;
}
