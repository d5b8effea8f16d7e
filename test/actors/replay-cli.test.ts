import { describe, expect, test } from "bun:test";
import { join } from "node:path";
import { timeline } from "../../src/actors/replay.ts";
import { openStore } from "../../src/store/store.ts";
import { counterKind } from "../fixtures/counter.ts";
import { journalOf, useDb } from "../fixtures/harness.ts";
import { FLAVORS, type TestDb } from "../helpers/stores.ts";

const ROOT = join(import.meta.dir, "..", "..");
const KINDS = join(ROOT, "test", "fixtures", "kinds.ts");

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the replay CLI as an operator would, against the test database. */
async function cli(db: TestDb, args: string[]): Promise<Run> {
  const env: Record<string, string | undefined> = { ...process.env, DATABASE_URL: "", TETHER_DATA_DIR: "", LOG_LEVEL: "silent" };
  if (db.config.databaseUrl) {
    const url = new URL(db.config.databaseUrl);
    url.searchParams.set("search_path", db.config.searchPath!);
    env.DATABASE_URL = url.toString();
  } else {
    env.TETHER_DATA_DIR = db.config.dataDir;
  }
  const proc = Bun.spawn([process.execPath, join(ROOT, "src", "cli", "replay.ts"), ...args], { cwd: ROOT, env, stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill(), 15_000);
  const [stdout, stderr, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

for (const flavor of FLAVORS) {
  describe(`replay CLI [${flavor}]`, () => {
    const ctx = useDb(flavor);

    /** counter/h: add 1, add 2, add 4, close; snapshots at 3 and (stop) 4. Nothing is left open. */
    async function history(): Promise<Array<{ seq: number; at: number }>> {
      const node = await ctx.boot([counterKind({ snapshotEvery: 3 })]);
      for (const n of [1, 2, 4]) await node.system.ask("counter/h", { type: "add", n });
      await node.system.ask("counter/h", { type: "close" });
      const journal = await journalOf(node.store, "counter", "h");
      await node.stop();
      return journal;
    }

    async function corruptSnapshot(seq: number): Promise<void> {
      const store = await ctx.open();
      await store.query(`update actor_snapshots set state = jsonb_set(state, '{context,count}', '999') where actor_id = 'h' and seq = $1`, [seq]);
      await store.close();
    }

    test("prints the timeline, and the same as JSON with --json", async () => {
      const journal = await history();
      const text = await cli(ctx.db, ["counter/h", "--kinds", KINDS]);
      expect(text.stderr).toBe("");
      expect(text.code).toBe(0);
      const lines = text.stdout.trimEnd().split("\n");
      expect(lines[0]).toBe("counter/h (logic version 1), from the initial state");
      expect(lines[1]).toBe(`#1 ${new Date(journal[0]!.at).toISOString()} add -> "open"`);
      expect(lines[2]).toBe("    count: 0 -> 1");
      expect(lines[3]).toBe('    effect {"data":1,"type":"reply"}');
      expect(lines).toContain(`#4 ${new Date(journal[3]!.at).toISOString()} close -> "closed"`);

      const json = await cli(ctx.db, ["--json", "counter/h", "--kinds", KINDS]);
      expect(json.code).toBe(0);
      const store = await ctx.open();
      const expected = await timeline(store, [counterKind()], "counter/h");
      await store.close();
      expect(JSON.parse(json.stdout)).toEqual(JSON.parse(JSON.stringify(expected)));
    });

    test("--at prints the state just after that seq", async () => {
      await history();
      const plain = await cli(ctx.db, ["counter/h", "--at", "2", "--kinds", KINDS]);
      expect(plain.code).toBe(0);
      expect(JSON.parse(plain.stdout)).toMatchObject({ value: "open", context: { id: "h", count: 3 } });
      const json = await cli(ctx.db, ["counter/h", "--at", "4", "--json", "--kinds", KINDS]);
      expect(json.code).toBe(0);
      expect(JSON.parse(json.stdout)).toMatchObject({ seq: 4, state: { value: "closed", context: { count: 7 } } });
    });

    test("--verify exits 0 when every snapshot is reproduced", async () => {
      await history();
      const run = await cli(ctx.db, ["counter/h", "--verify", "--kinds", KINDS]);
      expect(run.code).toBe(0);
      expect(run.stdout).toContain("snapshot @3: reproduced");
      expect(run.stdout).toContain("snapshot @4: reproduced");
      expect(run.stdout).toContain("OK: 2 snapshots checked over 4 journal entries from seq 0");
    });

    test("--verify exits non-zero and shows the difference when a stored snapshot diverges", async () => {
      await history();
      await corruptSnapshot(3);
      const run = await cli(ctx.db, ["counter/h", "--verify", "--kinds", KINDS]);
      expect(run.code).toBe(1);
      expect(run.stdout).toContain("snapshot @3: DIVERGES");
      expect(run.stdout).toContain("  context.count: stored 999 replayed 7");
      expect(run.stdout).toContain("snapshot @4: reproduced");
      expect(run.stdout).toContain("DIVERGED: 2 snapshots checked");
      const json = await cli(ctx.db, ["counter/h", "--verify", "--json", "--kinds", KINDS]);
      expect(json.code).toBe(1);
      expect(JSON.parse(json.stdout)).toMatchObject({ ok: false, checked: [{ seq: 3, ok: false }, { seq: 4, ok: true }] });
    });

    test("--verify prints each difference under the snapshot it belongs to", async () => {
      await history();
      await corruptSnapshot(3);
      const run = await cli(ctx.db, ["counter/h", "--verify", "--kinds", KINDS]);
      const lines = run.stdout.trimEnd().split("\n");
      const at = lines.indexOf("snapshot @3: DIVERGES");
      expect(at).toBeGreaterThanOrEqual(0);
      // Printed after "snapshot @4: reproduced", the diff reads as if it were @4's.
      expect(lines[at + 1]).toBe("  context.count: stored 999 replayed 7");
    });

    test("an actor without history or a kind it does not know: a message and exit 1", async () => {
      await history();
      const nobody = await cli(ctx.db, ["counter/nobody", "--kinds", KINDS]);
      expect(nobody.code).toBe(1);
      expect(nobody.stderr).toContain("replay: counter/nobody has no journal and no snapshot");
      const unknown = await cli(ctx.db, ["counter/h"]); // the product's kinds: no counter there
      expect(unknown.code).toBe(1);
      expect(unknown.stderr).toContain('replay: no logic is registered for kind "counter"');
    });

    test("an event the current logic throws on: the timeline up to it, then the failing seq and the error; exit 1", async () => {
      const node = await ctx.boot([counterKind()]);
      for (const n of [1, 2]) await node.system.ask("counter/b", { type: "add", n });
      await node.stop();
      // As if the logic changed since: it now throws on a journaled event (a failed actor).
      const store = await ctx.open();
      await store.query(`insert into actor_journal (kind, actor_id, seq, version, at, event)
        values ('counter', 'b', 3, 1, 1000, '{"type":"boom","at":1000}'::jsonb), ('counter', 'b', 4, 1, 1001, '{"type":"add","n":4,"at":1001}'::jsonb)`);
      await store.close();
      const text = await cli(ctx.db, ["counter/b", "--kinds", KINDS]);
      expect(text.stderr).toBe("");
      expect(text.code).toBe(1);
      const lines = text.stdout.trimEnd().split("\n");
      expect(lines.filter((l) => l.startsWith("#")).map((l) => l.split(" ")[0])).toEqual(["#1", "#2"]);
      expect(lines.at(-1)).toStartWith("replay stopped: the logic throws on #3 boom: ");
      expect(lines.at(-1)).toContain("boom on purpose");
      const json = await cli(ctx.db, ["counter/b", "--json", "--kinds", KINDS]);
      expect(json.code).toBe(1);
      const t = JSON.parse(json.stdout);
      expect(t.steps.map((s: { seq: number }) => s.seq)).toEqual([1, 2]);
      expect(t.failed).toMatchObject({ seq: 3, event: "boom", error: expect.stringContaining("boom on purpose") });
      const verified = await cli(ctx.db, ["counter/b", "--verify", "--kinds", KINDS]);
      expect(verified.code).toBe(1);
      expect(verified.stdout).toContain("replay stopped: the logic throws on #3 boom");
      const at = await cli(ctx.db, ["counter/b", "--at", "4", "--kinds", KINDS]);
      expect(at.code).toBe(1);
      expect(at.stderr).toContain("replay: counter/b: the logic throws on journal entry 3 (boom)");
    });

    test("a database at another schema version is refused with a message, never migrated", async () => {
      await history();
      const store = await ctx.open();
      const v = (await store.query<{ v: number }>("select max(version)::int as v from schema_migrations"))[0]!.v;
      await store.query("delete from schema_migrations where version = $1", [v]);
      await store.close();
      const run = await cli(ctx.db, ["counter/h", "--kinds", KINDS]);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe("");
      expect(run.stderr.trim()).toStartWith(`replay: the database schema is version ${v - 1}, this build expects ${v}`);
      const after = await openStore(ctx.db.config); // as it is: opening through ctx would migrate it
      expect(await after.query("select version from schema_migrations where version = $1", [v])).toEqual([]);
      await after.close();
    });

    test("bad usage exits 2 with the usage text; --help exits 0", async () => {
      const none = await cli(ctx.db, []);
      expect(none.code).toBe(2);
      expect(none.stderr).toContain("usage:");
      const badAt = await cli(ctx.db, ["counter/h", "--at", "two"]);
      expect(badAt.code).toBe(2);
      const two = await cli(ctx.db, ["counter/h", "counter/i"]);
      expect(two.code).toBe(2);
      const help = await cli(ctx.db, ["--help"]);
      expect(help.code).toBe(0);
      expect(help.stdout).toContain("--verify");
    });

    if (flavor === "pglite") {
      test("refused, with one line and exit 1, while a server holds the embedded data directory", async () => {
        await history();
        const server = await ctx.open(); // this process holds the directory, as a running server would
        const refused = await cli(ctx.db, ["counter/h", "--kinds", KINDS]);
        expect(refused.code).toBe(1);
        expect(refused.stderr.trim()).toBe(`replay: the data directory ${ctx.db.config.dataDir} is in use by process ${process.pid} (another Tether server, or npm run replay?): stop it first`);
        await server.close();
        expect((await cli(ctx.db, ["counter/h", "--kinds", KINDS])).code).toBe(0);
      });
    }
  });
}
