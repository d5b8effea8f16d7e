import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { DataDirInUseError, LOCK_FILE, lockDataDir } from "../../src/store/data-dir-lock.ts";
import { openStore } from "../../src/store/store.ts";

const LOCK_MODULE = resolve(import.meta.dir, "../../src/store/data-dir-lock.ts");
const lockIn = (dir: string) => `require(${JSON.stringify(LOCK_MODULE)}).lockDataDir(${JSON.stringify(dir)})`;

/** Another process that takes the directory and holds it until killed. */
async function holder(dir: string) {
  const proc = Bun.spawn([process.execPath, "-e", `${lockIn(dir)}; console.log("held"); setInterval(() => {}, 1000);`], { stdout: "pipe", stderr: "inherit" });
  const first = new TextDecoder().decode((await proc.stdout.getReader().read()).value);
  expect(first).toContain("held");
  return proc;
}

/** What another process gets when it tries to take the directory: "ok" or its error. */
function another(dir: string): string {
  const out = Bun.spawnSync([process.execPath, "-e", `try { ${lockIn(dir)}; console.log("ok"); } catch (e) { console.log(e.message); }`], { stdout: "pipe", stderr: "inherit" });
  return out.stdout.toString().trim();
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

  test("a store is refused a directory another live process holds, and gets it once that process is killed", async () => {
    const dir = newDir();
    const other = await holder(dir);
    const refused = await openStore({ dataDir: dir }).then(() => null, (err: Error) => err);
    expect(refused).toBeInstanceOf(DataDirInUseError);
    expect(refused!.message).toContain(`in use by process ${other.pid}`);

    other.kill("SIGKILL");
    await other.exited;
    const store = await openStore({ dataDir: dir });
    expect(readFileSync(join(dir, LOCK_FILE), "utf8")).toBe(`${process.pid}\n`);
    expect(await store.query("select 1 as one")).toEqual([{ one: 1 }]);
    expect(another(dir)).toContain("in use by process");
    await store.close();
    expect(another(dir)).toBe("ok");
  });

  test("a lock file whose process is gone, or names a live process that does not hold it, means nothing", () => {
    const dir = newDir();
    // Our parent is alive (a reused pid, say), but holds no lock on the file.
    writeFileSync(join(dir, LOCK_FILE), `${process.ppid || 1}\n`);
    lockDataDir(dir).release();
    writeFileSync(join(dir, LOCK_FILE), "garbage");
    lockDataDir(dir).release();
  });

  test("within one process the directory stays held until the last holder releases it", () => {
    const dir = join(newDir(), "created");
    const a = lockDataDir(dir);
    const b = lockDataDir(dir);
    a.release();
    a.release(); // twice is once
    expect(another(dir)).toContain("in use by process");
    b.release();
    expect(another(dir)).toBe("ok");
  });
});
