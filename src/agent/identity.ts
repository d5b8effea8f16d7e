import { existsSync, readFileSync } from "node:fs";
import { FILES, StateDir, StateError } from "./state.ts";

/**
 * The machine's identity: its Ed25519 key pair (M3: the private key never leaves the state
 * dir; the server keeps the public key from enrollment and checks a signature over its nonce on
 * every connect) and its machine_uid (stable across reinstalls of the agent, so enrolling again
 * reuses the machine's row instead of making a ghost).
 */
export interface Identity {
  privateKey: CryptoKey;
  /** Base64 of the raw 32-byte public key. */
  publicKey: string;
}

const PEM_LABEL = "PRIVATE KEY";

function toPem(der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString("base64").match(/.{1,64}/g)!.join("\n");
  return `-----BEGIN ${PEM_LABEL}-----\n${b64}\n-----END ${PEM_LABEL}-----\n`;
}

function fromPem(pem: string): Uint8Array<ArrayBuffer> {
  const m = pem.match(/-----BEGIN PRIVATE KEY-----([\s\S]+?)-----END PRIVATE KEY-----/);
  if (!m) throw new Error("not a PKCS8 PEM");
  return new Uint8Array(Buffer.from(m[1]!.replace(/\s+/g, ""), "base64"));
}

/** Loads the key pair from the state dir, or generates and stores one on the first run. */
export async function loadOrCreateIdentity(state: StateDir): Promise<{ identity: Identity; created: boolean }> {
  const stored = await loadIdentity(state);
  if (stored) return { identity: stored, created: false };
  return { identity: await createIdentity(state), created: true };
}

/** The stored key pair; null when there is none; StateError when the private key is unusable. */
export async function loadIdentity(state: StateDir): Promise<Identity | null> {
  const pem = state.read(FILES.privateKey);
  if (pem === null) return null;
  let privateKey: CryptoKey;
  try {
    privateKey = await crypto.subtle.importKey("pkcs8", fromPem(pem), { name: "Ed25519" }, true, ["sign"]);
  } catch {
    throw new StateError(`${state.path(FILES.privateKey)} is not an Ed25519 PKCS8 key`);
  }
  const publicKey = await publicKeyOf(privateKey);
  const stored = state.read(FILES.publicKey)?.trim();
  if (stored !== publicKey) state.write(FILES.publicKey, publicKey + "\n");
  return { privateKey, publicKey };
}

/** Generates a key pair and stores it, replacing any. */
export async function createIdentity(state: StateDir): Promise<Identity> {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  const publicKey = Buffer.from(await crypto.subtle.exportKey("raw", pair.publicKey)).toString("base64");
  state.write(FILES.privateKey, toPem(await crypto.subtle.exportKey("pkcs8", pair.privateKey)));
  state.write(FILES.publicKey, publicKey + "\n");
  return { privateKey: pair.privateKey, publicKey };
}

/** The public half of an Ed25519 private key (the JWK export carries it as `x`). */
async function publicKeyOf(privateKey: CryptoKey): Promise<string> {
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  return Buffer.from(jwk.x!, "base64url").toString("base64");
}

/** Ed25519 over exactly the nonce bytes the server sent. */
export async function signNonce(privateKey: CryptoKey, nonce: Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  return new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, privateKey, new Uint8Array(nonce)));
}

export interface UidSources {
  machineIdFile: string;
  productUuidFile: string;
}

export interface MachineUid {
  uid: string;
  /** Which sources went into it (names only; the values stay local). */
  sources: string[];
  /**
   * A fingerprint of each source (SHA-256, never the value), stored with the credentials: a clone
   * is a source that reads differently, not one that could not be read this time (credentials.ts).
   */
  parts: Record<string, string>;
}

/** Whether stored credentials were enrolled on this machine, by the sources both sides could read. */
export function sameMachine(stored: { machine_uid: string; uid_parts?: Record<string, string> | undefined }, now: MachineUid): "same" | "cloned" | "unverified" {
  if (stored.machine_uid === now.uid) return "same";
  const before = stored.uid_parts;
  // Credentials of an agent before fingerprints: a different uid could be a source unreadable now.
  if (!before) return "unverified";
  const common = Object.keys(now.parts).filter((k) => k in before);
  if (common.length === 0) return "unverified";
  return common.some((k) => before[k] !== now.parts[k]) ? "cloned" : "same";
}

const readTrimmed = (path: string): string | null => {
  try {
    if (!existsSync(path)) return null;
    const v = readFileSync(path, "utf8").trim();
    return v === "" ? null : v;
  } catch {
    return null; // product_uuid is root-only on most systems
  }
};

/** All zeros or all F's (ignoring dashes): firmware placeholders that many machines share. */
export function isPlaceholderId(value: string): boolean {
  const hex = value.replaceAll("-", "").toLowerCase();
  return /^0+$/.test(hex) || /^f+$/.test(hex);
}

/**
 * `muid_` + hex SHA-256 of "tether:machine_uid:v1|" + salt. The salt is
 * `machine-id:<…>` (/etc/machine-id) and `product_uuid:<…>` (SMBIOS, when readable), joined by
 * "|"; placeholders and systemd's "uninitialized" are skipped. With neither, a random UUID
 * persisted in the state dir (`random:<uuid>`): stable for this install only.
 */
export function deriveMachineUid(state: StateDir, sources: UidSources): MachineUid {
  const parts: string[] = [];
  const names: string[] = [];
  const machineId = readTrimmed(sources.machineIdFile)?.toLowerCase();
  if (machineId && machineId !== "uninitialized" && !isPlaceholderId(machineId)) {
    parts.push(`machine-id:${machineId}`);
    names.push("machine-id");
  }
  const productUuid = readTrimmed(sources.productUuidFile)?.toUpperCase();
  if (productUuid && !isPlaceholderId(productUuid)) {
    parts.push(`product_uuid:${productUuid}`);
    names.push("product_uuid");
  }
  if (parts.length === 0) {
    let seed = state.read(FILES.seed)?.trim();
    if (!seed) {
      seed = crypto.randomUUID();
      state.write(FILES.seed, seed + "\n");
    }
    parts.push(`random:${seed}`);
    names.push("random");
  }
  const hash = new Bun.CryptoHasher("sha256").update("tether:machine_uid:v1|" + parts.join("|")).digest("hex");
  const fingerprints: Record<string, string> = {};
  for (const [i, name] of names.entries()) fingerprints[name] = new Bun.CryptoHasher("sha256").update("tether:machine_uid_part:v1|" + parts[i]).digest("hex");
  return { uid: `muid_${hash}`, sources: names, parts: fingerprints };
}
