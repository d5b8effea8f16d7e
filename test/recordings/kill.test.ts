import { afterAll, describe, expect, test } from "bun:test";
import { resolve } from "node:path";
import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import { exportCast, parseCast, replayOutput } from "../../src/recordings/asciicast.ts";
import { readLines } from "../helpers/lines.ts";
import { dbEnv } from "../helpers/process.ts";
import { createTestDb, FLAVORS, type TestDb } from "../helpers/stores.ts";
import { insertSession } from "./helpers.ts";

/**
 * S6 against a real process: a recording writer is SIGKILLed after some flushes; reopened, the
 * database has every line that was reported flushed, in order, as a valid asciicast.
 */
const ROOT = resolve(import.meta.dir, "..", "..");

for (const flavor of FLAVORS) {
  describe(`recordings survive kill -9 (${flavor})`, () => {
    let db: TestDb;
    afterAll(async () => db?.destroy());

    test("everything flushed before SIGKILL is exported; nothing else is invented", async () => {
      db = await createTestDb(flavor);
      const setup = await db.open();
      const session = await insertSession(setup);
      await setup.close();

      const proc = Bun.spawn([process.execPath, resolve(import.meta.dir, "recording-writer.ts")], {
        cwd: ROOT,
        env: { ...process.env, ...dbEnv(db.config), SESSION_ID: session, TENANT_ID: DEFAULT_TENANT_ID, LOG_LEVEL: "silent" },
        stdin: "ignore",
        stdout: "pipe",
        stderr: "pipe",
      });
      const lines: string[] = [];
      readLines([proc.stdout, proc.stderr], (l) => lines.push(l));
      let flushed = 0;
      const deadline = Date.now() + 30_000;
      while (flushed < 400) {
        if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`writer stopped early:\n${lines.join("\n")}`);
        for (const l of lines) {
          const m = /^FLUSHED (\d+)$/.exec(l);
          if (m) flushed = Math.max(flushed, Number(m[1]));
        }
        await Bun.sleep(10);
      }
      proc.kill("SIGKILL");
      expect(await proc.exited).not.toBe(0);
      const id = lines.map((l) => /^RECORDING (\S+)$/.exec(l)?.[1]).find(Boolean)!;

      const store = await db.open();
      try {
        const out = replayOutput(parseCast((await exportCast(store, DEFAULT_TENANT_ID, id))!));
        const got = out.split("\r\n");
        expect(got.pop()).toBe(""); // whole lines only: a chunk is written whole or not at all
        expect(got.length).toBeGreaterThanOrEqual(flushed);
        expect(got).toEqual(got.map((_, i) => `line ${i} ✓`));
      } finally {
        await store.close();
      }
    }, 60_000);
  });
}
