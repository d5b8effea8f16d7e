import { loadConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { Recorder } from "../../src/recordings/recorder.ts";
import { applySchema } from "../../src/store/schema.ts";
import { openStore } from "../../src/store/store.ts";

/**
 * A process that records one terminal for the kill -9 test: it writes numbered lines through a
 * Recorder (flushing on its own every 100 ms too), prints `FLUSHED <n>` whenever an explicit
 * flush has made lines 0..n-1 durable, and runs until killed. SESSION_ID and TENANT_ID say
 * where; the store comes from TETHER_DATA_DIR or DATABASE_URL as for the server.
 */
const config = loadConfig();
const store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
await applySchema(store);
const recorder = new Recorder(store, silentLogger, { flushMs: 100, chunkBytes: 2048 });
const id = recorder.start({ tenantId: process.env.TENANT_ID!, sessionId: process.env.SESSION_ID!, machineId: null, channel: 1, cols: 80, rows: 24 });
console.log(`RECORDING ${id}`);
let n = 0;
for (;;) {
  for (let i = 0; i < 20; i++) recorder.output(id, new TextEncoder().encode(`line ${n++} ✓\r\n`));
  const upTo = n;
  if (await recorder.flush()) console.log(`FLUSHED ${upTo}`);
  for (let i = 0; i < 20; i++) recorder.output(id, new TextEncoder().encode(`line ${n++} ✓\r\n`));
  await Bun.sleep(5);
}
