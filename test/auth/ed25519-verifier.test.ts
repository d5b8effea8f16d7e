import { afterEach, expect, test } from "bun:test";
import { generateKeyPairSync, sign } from "node:crypto";
import { packChecks } from "../../src/auth/ed25519.ts";
import { Ed25519Verifier } from "../../src/auth/ed25519-verifier.ts";

/**
 * The agents' proof checks on their own thread (src/auth/ed25519-verifier.ts): batched, in
 * order, false for anything but a valid signature by that key, and still answered on the event
 * loop when the thread fails or is closed.
 */
const errors: string[] = [];
const log = { error: (o: { err?: string }) => void errors.push(o.err ?? "") };
let verifier: Ed25519Verifier | null = null;
afterEach(() => {
  verifier?.close();
  verifier = null;
  errors.length = 0;
});

function keyPair() {
  const { publicKey, privateKey } = generateKeyPairSync("ed25519");
  return { raw: Buffer.from(publicKey.export({ format: "jwk" }).x!, "base64url").toString("base64"), privateKey };
}
const nonce = () => crypto.getRandomValues(new Uint8Array(32));

/** 600 checks (more than two batches), every fourth with another key's signature, one with a flipped bit. */
function mixed() {
  const a = keyPair();
  const b = keyPair();
  return Array.from({ length: 600 }, (_, i) => {
    const message = nonce();
    const signature = new Uint8Array(sign(null, message, i % 4 === 3 ? b.privateKey : a.privateKey));
    if (i === 100) signature[10]! ^= 1;
    return { key: a.raw, message, signature, valid: i % 4 !== 3 && i !== 100 };
  });
}

/** The verifier's private state, for checking where its work was done. */
const internals = (v: Ed25519Verifier) => v as unknown as { inThread: boolean; threads: Array<{ worker: Worker }> };

test("valid signatures pass and others fail, each answered in its place, in batches on the threads", async () => {
  verifier = new Ed25519Verifier(log, 2);
  const checks = mixed();
  const answers = await Promise.all(checks.map((c) => verifier!.verify(c.key, c.message, c.signature)));
  expect(answers).toEqual(checks.map((c) => c.valid));
  // Checked on the threads (a burst shared between two), not by the fallback.
  expect(internals(verifier).inThread).toBe(false);
  expect(internals(verifier).threads.length).toBe(2);
  expect(errors).toEqual([]);
});

test("malformed keys and signatures are refused, not thrown", async () => {
  verifier = new Ed25519Verifier(log);
  const { raw, privateKey } = keyPair();
  const message = nonce();
  const signature = new Uint8Array(sign(null, message, privateKey));
  expect(await verifier.verify(raw, message, signature)).toBe(true);
  expect(await verifier.verify(raw, message, signature.subarray(0, 63))).toBe(false);
  expect(await verifier.verify(raw, message, new Uint8Array(65))).toBe(false);
  expect(await verifier.verify("", message, signature)).toBe(false);
  expect(await verifier.verify("not base64 at all!", message, signature)).toBe(false);
  expect(await verifier.verify(Buffer.alloc(33).toString("base64"), message, signature)).toBe(false);
  // 32 bytes that are not a point of the curve.
  expect(await verifier.verify(Buffer.alloc(32, 0xff).toString("base64"), message, signature)).toBe(false);
  expect(await verifier.verify(raw, new Uint8Array(0), signature)).toBe(false);
  // A signature that is a view into a larger buffer counts its own bytes only.
  const padded = new Uint8Array(200);
  padded.set(signature, 50);
  expect(await verifier.verify(raw, message, padded.subarray(50, 114))).toBe(true);
});

test("a thread count below one, and a check packed with a key or signature of the wrong size, are refused", () => {
  expect(() => new Ed25519Verifier(log, 0)).toThrow();
  expect(() => new Ed25519Verifier(log, Number.NaN)).toThrow();
  const ok = { publicKey: new Uint8Array(32), message: new Uint8Array(32), signature: new Uint8Array(64) };
  expect(packChecks([ok]).byteLength).toBe(32 + 4 + 32 + 64);
  expect(() => packChecks([ok, { ...ok, signature: new Uint8Array(63) }])).toThrow();
  expect(() => packChecks([{ ...ok, publicKey: new Uint8Array(33) }])).toThrow();
});

test("if the thread dies, the checks it held and every later one are answered on the event loop", async () => {
  verifier = new Ed25519Verifier(log);
  const checks = mixed();
  const answers = Promise.all(checks.map((c) => verifier!.verify(c.key, c.message, c.signature)));
  // Once the first batch is with the thread, it is killed under it.
  await new Promise((r) => setImmediate(r));
  internals(verifier).threads[0]!.worker.terminate();
  expect(await answers).toEqual(checks.map((c) => c.valid));
  const later = checks.slice(0, 8);
  expect(await Promise.all(later.map((c) => verifier!.verify(c.key, c.message, c.signature)))).toEqual(later.map((c) => c.valid));
  expect(errors.length).toBe(1);
  expect(internals(verifier).inThread).toBe(true);
});

test("a thread that never answers is given up on: its checks, and every later one, are answered on the event loop", async () => {
  verifier = new Ed25519Verifier(log, 1, { workerUrl: new URL("../fixtures/silent-worker.ts", import.meta.url), answerWithinMs: 300 });
  const checks = mixed().slice(0, 40);
  const started = performance.now();
  expect(await Promise.all(checks.map((c) => verifier!.verify(c.key, c.message, c.signature)))).toEqual(checks.map((c) => c.valid));
  expect(performance.now() - started).toBeGreaterThanOrEqual(290);
  expect(errors).toEqual(["a verifier thread did not answer a batch in 300 ms"]);
  expect(internals(verifier)).toMatchObject({ inThread: true, threads: [] });
  const later = checks.slice(0, 4);
  expect(await Promise.all(later.map((c) => verifier!.verify(c.key, c.message, c.signature)))).toEqual(later.map((c) => c.valid));
  expect(errors.length).toBe(1);
});

test("closed with checks under way, each is still answered", async () => {
  verifier = new Ed25519Verifier(log);
  const checks = mixed();
  const answers = Promise.all(checks.map((c) => verifier!.verify(c.key, c.message, c.signature)));
  await new Promise((r) => setImmediate(r));
  verifier.close();
  expect(await answers).toEqual(checks.map((c) => c.valid));
  expect(await verifier.verify(checks[0]!.key, checks[0]!.message, checks[0]!.signature)).toBe(true);
  expect(errors).toEqual([]);
});

test("a process whose verifier is idle exits by itself; one with checks under way waits for them", async () => {
  const script = `
    import { generateKeyPairSync, sign } from "node:crypto";
    import { Ed25519Verifier } from ${JSON.stringify(new URL("../../src/auth/ed25519-verifier.ts", import.meta.url).pathname)};
    const { publicKey, privateKey } = generateKeyPairSync("ed25519");
    const raw = Buffer.from(publicKey.export({ format: "jwk" }).x, "base64url").toString("base64");
    const v = new Ed25519Verifier({ error: (o) => console.log("error", o.err) });
    const message = new Uint8Array(32);
    // Nothing else keeps this process alive: the checks' threads must, until they answer.
    v.verify(raw, message, sign(null, message, privateKey)).then((ok) => console.log("answered", ok));
  `;
  const proc = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "inherit" });
  const exited = await Promise.race([proc.exited, Bun.sleep(10_000).then(() => "timeout" as const)]);
  if (exited === "timeout") proc.kill();
  expect(exited).toBe(0);
  expect(await new Response(proc.stdout).text()).toBe("answered true\n");
});
