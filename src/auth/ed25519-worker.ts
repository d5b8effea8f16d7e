/**
 * The Ed25519 verifier's thread (see ed25519-verifier.ts): checks a batch of signatures and
 * answers one byte per check (1: valid).
 */
import { unpackChecks, verifyEd25519Now } from "./ed25519.ts";
import type { VerifyReply, VerifyRequest } from "./ed25519-verifier.ts";

declare const self: Worker;

self.onmessage = (e: MessageEvent<VerifyRequest>) => {
  const { id, data, count } = e.data;
  const checks = unpackChecks(data, count);
  const valid = new Uint8Array(count);
  for (let i = 0; i < count; i++) valid[i] = verifyEd25519Now(checks[i]!.publicKey, checks[i]!.message, checks[i]!.signature) ? 1 : 0;
  self.postMessage({ id, valid } satisfies VerifyReply, [valid.buffer]);
};
