import { readFileSync } from "node:fs";
import { join } from "node:path";
import { canonical, ReplayError, stateAt, timeline, verify, type ReplayFailure } from "../actors/replay.ts";
import type { KindDefinition } from "../actors/types.ts";
import { loadConfig } from "../config.ts";
import { productKinds } from "../kinds.ts";
import { parseSchema } from "../store/schema.ts";
import { openStore, type Store } from "../store/store.ts";

const USAGE = `usage: npm run replay -- <kind>/<id> [--at <seq>] [--verify] [--json] [--kinds <module>]

  <kind>/<id>      the actor, e.g. machine/4f1c...
  (no option)      its timeline: seq, time, event, state, context changes, effects
  --at <seq>       its full persisted state just after journal entry <seq>
  --verify         replay from the earliest point; check every later snapshot is reproduced
  --json           machine-readable output
  --kinds <module> a module exporting \`kinds: KindDefinition[]\` (default: the product's kinds)

Reads DATABASE_URL or TETHER_DATA_DIR like the server. On the embedded database, stop the
server first: PGlite is single-process. Read-only: a database whose schema is not the one this
build expects is refused, never migrated.`;

/** The schema version this build's schema.sql describes. */
const expectedSchema = () => parseSchema(readFileSync(join(import.meta.dir, "..", "..", "schema.sql"), "utf8")).length;

/** A diagnostic tool must not migrate a production database: the schema must already match. */
async function schemaMismatch(store: Store): Promise<string | null> {
  const expected = expectedSchema();
  const [table] = await store.query<{ t: string | null }>("select to_regclass('schema_migrations')::text as t");
  if (!table?.t) return `the database has no Tether schema (this build expects version ${expected}); nothing to replay`;
  const [row] = await store.query<{ v: number | null }>("select max(version) as v from schema_migrations");
  const actual = Number(row?.v ?? 0);
  if (actual === expected) return null;
  return `the database schema is version ${actual}, this build expects ${expected}: ${actual < expected
    ? "start the matching server once to migrate it, or use the build that wrote it"
    : "use a build at least as new as the server that wrote it"} (replay never migrates)`;
}

const failureLine = (f: ReplayFailure) => `replay stopped: the logic throws on #${f.seq} ${f.event}: ${f.error}`;

async function main(argv: string[]): Promise<number> {
  const args = [...argv];
  const flag = (name: string) => {
    const i = args.indexOf(name);
    if (i < 0) return false;
    args.splice(i, 1);
    return true;
  };
  const option = (name: string) => {
    const i = args.indexOf(name);
    if (i < 0) return undefined;
    const v = args[i + 1];
    args.splice(i, 2);
    return v;
  };
  if (flag("--help") || flag("-h")) return void console.log(USAGE), 0;
  const json = flag("--json");
  const doVerify = flag("--verify");
  const at = option("--at");
  const kindsModule = option("--kinds");
  const address = args[0];
  if (!address || args.length > 1 || (at !== undefined && !/^\d+$/.test(at))) {
    console.error(USAGE);
    return 2;
  }
  const kinds: KindDefinition[] = kindsModule ? (await import(Bun.pathToFileURL(kindsModule).href)).kinds : productKinds;
  const config = loadConfig();
  let store;
  try {
    store = await openStore({ databaseUrl: config.databaseUrl, dataDir: config.dataDir });
  } catch (err) {
    // The server holding the embedded data directory, say: one line, not a stack trace.
    console.error(`replay: ${(err as Error).message}`);
    return 1;
  }
  try {
    const mismatch = await schemaMismatch(store);
    if (mismatch) {
      console.error(`replay: ${mismatch}`);
      return 1;
    }
    if (doVerify) {
      const v = await verify(store, kinds, address);
      if (json) console.log(JSON.stringify(v, null, 2));
      else {
        for (const c of v.checked) {
          console.log(`snapshot @${c.seq}: ${c.ok ? "reproduced" : "DIVERGES"}`);
          for (const d of c.diff ?? []) console.log(`  ${d.path}: stored ${canonical(d.before)} replayed ${canonical(d.after)}`);
        }
        for (const s of v.skipped) console.log(`snapshot @${s.seq}: skipped (${s.reason})`);
        if (v.failed) console.log(failureLine(v.failed));
        console.log(`${v.ok ? "OK" : "DIVERGED"}: ${v.checked.length} snapshots checked over ${v.journalLength} journal entries from seq ${v.from}`);
      }
      return v.ok ? 0 : 1;
    }
    if (at !== undefined) {
      const s = await stateAt(store, kinds, address, Number(at));
      console.log(JSON.stringify(json ? s : s.state, null, 2));
      return 0;
    }
    const t = await timeline(store, kinds, address);
    if (json) console.log(JSON.stringify(t, null, 2));
    else {
      console.log(`${t.address} (logic version ${t.version}), from ${t.from === 0 ? "the initial state" : `snapshot @${t.from}`}`);
      for (const s of t.steps) {
        console.log(`#${s.seq} ${new Date(s.at).toISOString()} ${s.event} -> ${canonical(s.state)}`);
        for (const c of s.changes) console.log(`    ${c.path}: ${canonical(c.before)} -> ${canonical(c.after)}`);
        for (const e of s.effects) console.log(`    effect ${canonical(e)}`);
      }
      if (t.failed) console.log(failureLine(t.failed));
    }
    // The partial timeline is the answer; a non-zero exit says it stops short of the journal's end.
    return t.failed ? 1 : 0;
  } catch (err) {
    if (err instanceof ReplayError || (err as { code?: string }).code === "ACTOR_PERMANENT_FAILURE") {
      console.error(`replay: ${(err as Error).message}`);
      return 1;
    }
    throw err;
  } finally {
    await store.close();
  }
}

process.exit(await main(process.argv.slice(2)));
