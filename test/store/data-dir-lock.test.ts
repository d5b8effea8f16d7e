import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DataDirInUseError, LOCK_FILE, lockDataDir } from "../../src/store/data-dir-lock.ts";
import { openStore } from "../../src/store/store.ts";

const LOCK_MODULE = resolve(import.meta.dir, "../../src/store/data-dir-lock.ts");

/** Another process that takes the directory and holds it until killed. */
async function holder(dataDir: string) {
  const proc = Bun.spawn([process.execPath, "-e", `require(${JSON.stringify(LOCK_MODULE)}).lockDataDir(${JSON.stringify(dataDir)}); console.log("held"); setInterval(() => {}, 1000);`], { stdout: "pipe", stderr: "inherit" });
  const reader = proc.stdout.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  expect(first).toContain("held");
  return proc;
}

describe("the embedded data directory's lock", () => {
  const dirs: string[] = [];
  const newDir = () => {
    const dir = mkdtempSync(join(tmpdir(), "tether-lock-"));
    dirs.push(dir);
    return dir;
  };
  afterAll(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  test("a store is refused a directory another live process holds, and takes it over once that process is killed", async () => {
    const dir = newDir();
    const other = await holder(dir);
    const refused = await openStore({ dataDir: dir }).then(() => null, (err: Error) => err);
    expect(refused).toBeInstanceOf(DataDirInUseError);
    expect(refused!.message).toContain(`in use by process ${other.pid}`);
    // Nothing was created in the directory: PGlite never opened it.
    expect(existsSync(join(dir, "PG_VERSION"))).toBe(false);

    other.kill("SIGKILL");
    await other.exited;
    const store = await openStore({ dataDir: dir });
    expect(readFileSync(join(dir, LOCK_FILE), "utf8").split("\n")[0]).toBe(String(process.pid));
    expect(await store.query("select 1 as one")).toEqual([{ one: 1 }]);
    await store.close();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  test("a file whose pid now belongs to another process (a reused pid after a crash or a reboot) is stale", () => {
    const dir = newDir();
    const bootId = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    // Our parent is alive, but it did not start at tick 1 of this boot, nor in another boot.
    writeFileSync(join(dir, LOCK_FILE), `${process.ppid}\n${bootId}\n1\n`);
    lockDataDir(dir).release();
    writeFileSync(join(dir, LOCK_FILE), `${process.ppid}\nanother-boot\n\n`);
    lockDataDir(dir).release();
    // A pid alone (no boot, no start time: another system's file) is trusted.
    writeFileSync(join(dir, LOCK_FILE), `${process.ppid}\n`);
    expect(() => lockDataDir(dir)).toThrow(DataDirInUseError);
    // Garbage (a file cut short) is stale.
    writeFileSync(join(dir, LOCK_FILE), "");
    lockDataDir(dir).release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });

  test("within one process the file stays until the last holder releases it", () => {
    const dir = join(newDir(), "created");
    const a = lockDataDir(dir);
    const b = lockDataDir(dir);
    a.release();
    a.release(); // twice is once
    expect(existsSync(join(dir, LOCK_FILE))).toBe(true);
    b.release();
    expect(existsSync(join(dir, LOCK_FILE))).toBe(false);
  });
});
