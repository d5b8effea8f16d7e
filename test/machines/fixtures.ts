import { agentIdentity } from "../helpers/agent-client.ts";
import type { ApiResponse, TestApp } from "../helpers/app.ts";

/** Sites, keys and enrolled machines for the sites / enrollment / machines / grants tests. */

/** A fresh Ed25519 identity key, as the agent would register it: base64 of the raw 32 bytes. */
export async function ed25519PublicKey(): Promise<string> {
  const pair = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  return Buffer.from(await crypto.subtle.exportKey("raw", pair.publicKey)).toString("base64");
}

let n = 0;
export const uniq = (prefix: string) => `${prefix}-${++n}-${Math.random().toString(36).slice(2, 7)}`;

export interface SiteWithKey {
  id: string;
  code: string;
  key: string;
  version: number;
}

/** Creates a site and issues its first enrollment key. */
export async function siteWithKey(app: TestApp, code = uniq("SITE").toUpperCase(), company = "Acme"): Promise<SiteWithKey> {
  const site = await app.call("POST", "/api/sites", { token: app.adminToken, body: { site_code: code, display_name: `${code} office`, company } });
  if (site.status !== 201) throw new Error(`create site: ${site.status} ${JSON.stringify(site.body)}`);
  const rotated = await app.call("POST", `/api/sites/${site.body.id}/enrollment-key/rotate`, { token: app.adminToken });
  if (rotated.status !== 201) throw new Error(`rotate: ${rotated.status} ${JSON.stringify(rotated.body)}`);
  return { id: site.body.id, code, key: rotated.body.key, version: rotated.body.version };
}

export interface EnrollInput {
  site_code: string;
  enrollment_key: string;
  machine_uid: string;
  hostname: string;
  labels?: Record<string, unknown>;
  public_key: string;
}

export async function enrollBody(site: SiteWithKey, over: Partial<EnrollInput> = {}): Promise<EnrollInput> {
  return {
    site_code: site.code,
    enrollment_key: site.key,
    machine_uid: uniq("muid"),
    hostname: uniq("WS").toUpperCase(),
    labels: { department: "IT", tags: ["prod"] },
    public_key: await ed25519PublicKey(),
    ...over,
  };
}

export const enroll = (app: TestApp, body: EnrollInput, headers?: Record<string, string>): Promise<ApiResponse> =>
  app.call("POST", "/api/enroll", { body, headers });

/** Enrolls a new machine at `site` and returns its id, its agent key and what it sent. */
export async function enrolledMachine(app: TestApp, site: SiteWithKey, over: Partial<EnrollInput> = {}) {
  const body = await enrollBody(site, over);
  const r = await enroll(app, body);
  if (r.status !== 201) throw new Error(`enroll: ${r.status} ${JSON.stringify(r.body)}`);
  return { id: r.body.machine_id as string, key: r.body.key as string, body };
}

/** The body of an error response without its per-request correlation id. */
/** Enrolls a machine with a fresh Ed25519 identity; returns what its agent would store. */
export async function enrolledAgent(app: TestApp, site: SiteWithKey, over: Partial<EnrollInput> = {}) {
  const id = await agentIdentity();
  const r = await enroll(app, await enrollBody(site, { public_key: id.publicKey, ...over }));
  if (r.status !== 201) throw new Error(`enroll: ${r.status} ${JSON.stringify(r.body)}`);
  return { id: r.body.machine_id as string, key: r.body.key as string, privateKey: id.keys.privateKey };
}

export const sansCorrelation = (body: any) => ({ ...body, correlation_id: undefined });
