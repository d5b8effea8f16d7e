import { DEFAULT_TENANT_ID } from "../../src/auth/tenants.ts";
import type { Logger } from "../../src/log.ts";
import { silentLogger } from "../../src/log.ts";
import { CastLines } from "../../src/recordings/chunk-codec.ts";
import type { Queryable, Store } from "../../src/store/store.ts";

/** Small fixtures for the recordings tests. */

/** A sessions row (the recordings table references it), as the session actor would project it. */
export async function insertSession(db: Queryable, opts: { id?: string; tenantId?: string; machineId?: string | null } = {}): Promise<string> {
  const id = opts.id ?? crypto.randomUUID();
  await db.query("insert into sessions (id, tenant_id, kind, technician, state, machine_id) values ($1, $2, 'unattended', 'tech', 'active', $3)", [
    id, opts.tenantId ?? DEFAULT_TENANT_ID, opts.machineId ?? null,
  ]);
  return id;
}

/** A machines row of a tenant. */
export async function insertMachine(db: Queryable, opts: { tenantId?: string; hostname?: string } = {}): Promise<string> {
  const id = crypto.randomUUID();
  await db.query("insert into machines (id, tenant_id, machine_uid, hostname, public_key) values ($1, $2, $3, $4, 'x')", [
    id, opts.tenantId ?? DEFAULT_TENANT_ID, `uid-${id}`, opts.hostname ?? `host-${id.slice(0, 8)}`,
  ]);
  return id;
}

/** A store whose writes can be made to fail, like a database that went away. */
export class FlakyStore implements Store {
  readonly flavor: Store["flavor"];
  down = false;
  attempts = 0;
  constructor(readonly inner: Store) {
    this.flavor = inner.flavor;
  }
  query<T = Record<string, unknown>>(sql: string, params?: readonly unknown[]): Promise<T[]> {
    if (this.down) return Promise.reject(new Error("connection refused (test)"));
    return this.inner.query<T>(sql, params);
  }
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    this.attempts++;
    if (this.down) return Promise.reject(new Error("connection refused (test)"));
    return this.inner.transaction(fn);
  }
  exec(script: string): Promise<void> {
    return this.inner.exec(script);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** A logger that keeps the messages it is given (warnings to check). */
export function capturingLogger(): { log: Logger; messages: Array<{ level: string; msg: string }> } {
  const messages: Array<{ level: string; msg: string }> = [];
  const log = silentLogger.child({});
  for (const level of ["trace", "debug", "info", "warn", "error", "fatal"] as const) {
    (log as any)[level] = (a: unknown, b?: unknown) => messages.push({ level, msg: String(typeof a === "string" ? a : b) });
  }
  return { log, messages };
}

/** UTF-8 bytes of a string. */
export const utf8 = (s: string) => new TextEncoder().encode(s);

/** A whole recording's event lines from its stored chunks, in order, as the export builds them. */
export function castLines(chunks: Iterable<{ data?: Uint8Array | null; events?: string | null }>): string {
  const out = new CastLines();
  let text = "";
  for (const c of chunks) text += out.chunk(c);
  return text + out.end();
}
