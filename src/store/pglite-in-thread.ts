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
    // bytea: PGlite's own parser converts byte by byte in JS (about 55 ms per MiB here); this
    // one is native. A bytea parameter goes as it is: PGlite sends bytes in binary format, which
    // costs a copy, where any text form (its own hex, ours, base64) costs 15–40 ms per MiB in
    // PGlite's protocol writer and the database's decoding.
    parsers: { [types.INT8]: (v: string) => Number(v), [types.BYTEA]: (v: string) => Uint8Array.fromHex(v.slice(2)) },
    serializers: {
      [types.BYTEA]: (x: unknown) => {
        if (!(x instanceof Uint8Array)) throw new Error("Invalid input for bytea type");
        // The typing says string, but PGlite's writer (0.5) sends any ArrayBuffer view that a
        // serializer returns in binary format; test/store/pglite-worker.test.ts checks the round trip.
        return x as unknown as string;
      },
    },
    extensions: { pg_trgm },
  });
}
