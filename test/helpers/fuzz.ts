import { expect } from "bun:test";
import pino from "pino";
import type { Logger } from "../../src/log.ts";
import type { TestApp } from "./app.ts";

/**
 * The bounded fuzzers' harness (test/http/fuzz.test.ts, test/http/fuzz-routes.test.ts): the
 * seed, a seedable generator of inputs, a logger that keeps the server's error-level lines, and
 * the check that the server is still healthy afterwards.
 *
 * Deterministic: FUZZ_SEED picks another sequence (the seed is in every failure message).
 */
export const SEED = Number(process.env.FUZZ_SEED ?? 20261124);

/** mulberry32: small, seedable, good enough to pick inputs. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Field names of the agent and viewer protocols, for values and mutations. */
export const FIELDS = ["t", "machine_id", "key", "agent_version", "protocol", "signature", "inventory", "seq", "session", "channel", "req", "cols", "rows", "path", "size", "argv", "text", "bytes", "granted", "hostname", "users", "name", "body"];

export class Fuzz {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = prng(seed);
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(max: number): Uint8Array<ArrayBuffer> {
    const b = new Uint8Array(this.int(max + 1));
    for (let i = 0; i < b.length; i++) b[i] = this.int(256);
    return b;
  }
  hex(n: number): string {
    return Array.from({ length: n }, () => this.int(16).toString(16)).join("");
  }
  string(): string {
    const hex = (n: number) => this.hex(n);
    return this.pick<() => string>([
      () => "",
      () => String.fromCharCode(...Array.from({ length: 1 + this.int(20) }, () => 32 + this.int(95))),
      () => "é 👍 \u200b 中文",
      () => "x".repeat(this.int(5_000)),
      () => "a\u0000b",
      () => "\ud800",
      () => `cak_${hex(64)}`,
      () => `${hex(8)}-${hex(4)}-${hex(4)}-${hex(4)}-${hex(12)}`,
      () => "../../etc/passwd",
      () => "%00%ff",
      () => "online",
    ])();
  }
  value(depth = 0, fields: readonly string[] = FIELDS): unknown {
    const leaf = [
      () => null, () => true, () => false, () => 0, () => -1, () => 2 ** 31, () => 2 ** 53 + 2, () => -(2 ** 40), () => 1.5,
      () => Number.NaN, () => Number.POSITIVE_INFINITY, () => -0, () => this.string(), () => this.bytes(64),
    ];
    const nested = [
      () => Array.from({ length: this.int(5) }, () => this.value(depth + 1, fields)),
      () => Object.fromEntries(Array.from({ length: this.int(5) }, () => [this.next() < 0.7 ? this.pick(fields) : this.string().slice(0, 40), this.value(depth + 1, fields)])),
    ];
    return this.pick(depth < 3 ? [...leaf, ...nested] : leaf)();
  }
  /** A valid message with one to three fields replaced, dropped or added. */
  mutate(base: Record<string, unknown>): Record<string, unknown> {
    const m: Record<string, unknown> = structuredClone(base);
    for (let n = 1 + this.int(3); n > 0; n--) {
      const keys = Object.keys(m);
      const op = this.int(4);
      if (op === 0 && keys.length > 0) delete m[this.pick(keys)];
      else if (op === 1 && keys.length > 0) m[this.pick(keys)] = this.value();
      else if (op === 2) m[this.pick(FIELDS)] = this.value();
      else m.t = this.pick([...new Set([m.t, "hello", "proof", "status", "heartbeat", "chat", "ch.open", "term.open", this.string()])]);
    }
    return m;
  }
}

/** A logger for the server under test that keeps its error-level lines (and above) in `errors`. */
export function errorCapture(): { logger: Logger; errors: string[] } {
  const errors: string[] = [];
  const logger = pino({ level: "error" }, { write: (line: string) => void errors.push(line) });
  return { logger, errors };
}

/** Ready, with no failed actor, and nothing logged as an error (the lines are taken). */
export async function expectReady(app: TestApp, errors: string[], seed = SEED): Promise<void> {
  const r = await app.call("GET", "/readyz");
  expect({ seed, status: r.status, failed: r.body?.failed_actors, errors: errors.splice(0) }).toEqual({ seed, status: 200, failed: [], errors: [] });
}
