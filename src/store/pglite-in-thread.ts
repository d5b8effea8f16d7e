import { mkdirSync } from "node:fs";
import { PGlite, types, type PGliteOptions } from "@electric-sql/pglite";
import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";

/**
 * Opens PGlite on the calling thread with Tether's options. The server runs it on a worker
 * thread (`pglite-worker.ts`, behind `openPglite`); this is that worker's way in, and the
 * in-thread baseline bench/store.ts compares it with.
 */
export async function createPglite(dataDir: string, extra: Pick<PGliteOptions, "pgliteWasmModule"> = {}): Promise<PGlite> {
  mkdirSync(dataDir, { recursive: true });
  return PGlite.create(dataDir, {
    ...extra,
    // int8 as a JS number, as on the postgres.js side: sequence numbers and ms times fit in 2^53.
    // bytea: PGlite's own serializer and parser convert byte by byte in JS (about 140 and 55 ms
    // per MiB here); these are native (under 1 ms per MiB).
    parsers: { [types.INT8]: (v: string) => Number(v), [types.BYTEA]: (v: string) => Uint8Array.fromHex(v.slice(2)) },
    serializers: {
      [types.BYTEA]: (x: unknown) => {
        if (!(x instanceof Uint8Array)) throw new Error("Invalid input for bytea type");
        return "\\x" + Buffer.from(x.buffer, x.byteOffset, x.byteLength).toString("hex");
      },
    },
    extensions: { pg_trgm },
  });
}
