import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { CORRELATION_HEADER, ErrorEnvelope } from "../../src/protocol/errors.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { errorCapture, expectReady, Fuzz, SEED } from "../helpers/fuzz.ts";
import { FLAVORS } from "../helpers/stores.ts";
import { enrolledMachine, siteWithKey } from "../machines/fixtures.ts";

/**
 * Bounded fuzzing of every operation of the HTTP API, as the server itself documents them in
 * /api/openapi.json (so a new route is fuzzed without anyone listing it here). Each operation
 * is called PER_OP times: path parameters are real ids of fixtures (a site, machines, sessions,
 * rooms, users, tokens, keys, a support code) or junk; bodies and queries are built from the
 * operation's JSON schema, valid and then mutated (fields dropped, wrong types, extra fields,
 * NUL and lone surrogates, very long strings, deep nesting, numbers out of range), or not JSON
 * at all, or sent under another content type; callers are the admin, nobody, lower roles and
 * an API token, and odd credentials (another plane's key, a cross-site cookie, a malformed one).
 *
 * Whatever comes in: no 5xx; every 4xx is the error envelope (src/http/errors.ts) with the
 * response's correlation id; nothing is logged at error level; and afterwards the server is
 * ready with no failed actor.
 *
 * Deterministic for a seed: FUZZ_SEED picks another sequence (the seed is in every failure).
 * FUZZ_VERBOSE=1 prints the statuses each operation answered with.
 */
const PER_OP = 24;
/** A call that takes longer than this is a failure of its own (a hung request). */
const CALL_TIMEOUT_MS = 10_000;

/**
 * Operations fuzzed after all the others, in this order, because each one ends or narrows the
 * credentials every other operation is called with. Not skipped: only moved to the end.
 */
const LAST = [
  // A policy requiring a second factor restricts every open session of those roles at once,
  // the fixtures' included: from then on they only get 403 TOTP_ENROLLMENT_REQUIRED.
  "PATCH /api/settings",
  // Ends the session it is called with: its admin calls use spare sessions of a second admin
  // (see ENDS_OWN_SESSION), and its lower-role calls end those roles' sessions.
  "POST /api/auth/logout",
];
/** Operations whose admin calls use spare admin sessions, not the admin token every other call uses. */
const ENDS_OWN_SESSION = new Set(["POST /api/auth/logout"]);

type JsonSchema = {
  type?: string | string[];
  enum?: unknown[];
  const?: unknown;
  format?: string;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
};

interface Operation {
  /** "POST /api/rooms/{id}/messages" */
  name: string;
  method: string;
  path: string;
  pathParams: string[];
  query: Array<{ name: string; schema: JsonSchema }>;
  body: JsonSchema | null;
}

const METHODS = ["get", "post", "put", "patch", "delete"];

/**
 * Operations that end or replace a fixture (a DELETE; ending a session, cancelling a support
 * code, removing machines in bulk, rotating a site's enrollment key) come after the others, so
 * those find the fixtures still there.
 */
const ENDS_SOMETHING = /(^|-)(delete|end|cancel|rotate|revoke)$/;
const endsSomething = (op: Operation) => op.method === "DELETE" || ENDS_SOMETHING.test(op.path.split("/").at(-1) ?? "");

/** Every operation of the document, in its order; those that end something after the others, then LAST. */
function operations(spec: any): Operation[] {
  const ops: Operation[] = [];
  for (const [path, item] of Object.entries<any>(spec.paths)) {
    for (const method of METHODS) {
      const op = item[method];
      if (!op) continue;
      const params: any[] = op.parameters ?? [];
      ops.push({
        name: `${method.toUpperCase()} ${path}`,
        method: method.toUpperCase(),
        path,
        pathParams: [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]!),
        query: params.filter((p) => p.in === "query").map((p) => ({ name: p.name, schema: p.schema ?? {} })),
        body: op.requestBody?.content?.["application/json"]?.schema ?? null,
      });
    }
  }
  const phase = (op: Operation) => (LAST.includes(op.name) ? 2 + LAST.indexOf(op.name) : endsSomething(op) ? 1 : 0);
  return ops.map((op, i) => ({ op, i })).sort((a, b) => phase(a.op) - phase(b.op) || a.i - b.i).map((x) => x.op);
}

/** Which fixture ids a path parameter takes: by its name, else by the path segment before it. */
const POOL_BY_NAME: Record<string, string> = {
  machine_id: "machines", user_id: "users", site_id: "sites", session_id: "sessions", room_id: "rooms", key_id: "agentKeys", member: "users",
  code: "codes", kind: "kinds", site_code: "siteCodes", enrollment_key: "enrollmentKeys", username: "usernames",
};
const POOL_BY_SEGMENT: Record<string, string> = {
  users: "users", machines: "machines", sites: "sites", sessions: "sessions", rooms: "rooms", recordings: "recordings", tokens: "apiTokens",
  "viewer-tokens": "viewerTokens", keys: "agentKeys", grants: "machines", members: "users", "support-codes": "codes", actors: "kinds",
};

function pathParamPool(op: Operation, param: string, filled: Record<string, string>): string {
  const segments = op.path.split("/");
  const at = segments.indexOf(`{${param}}`);
  const before = segments[at - 1] ?? "";
  if (param === "id" || param === "token_id") {
    // After another parameter (/api/actors/{kind}/{id}): an id of the kind it names, if it names one.
    if (before.startsWith("{")) return POOL_BY_SEGMENT[`${filled[before.slice(1, -1)]}s`] ?? "anyIds";
    return POOL_BY_SEGMENT[before] ?? "anyIds";
  }
  return POOL_BY_NAME[param] ?? POOL_BY_SEGMENT[before] ?? "anyIds";
}

/** The resource an operation is about ("machines" for /api/machines/bulk-delete): uuids of unknown meaning come from it. */
const resourceOf = (op: Operation) => POOL_BY_SEGMENT[op.path.split("/")[2] ?? ""] ?? "anyIds";

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/** Path parameter junk, already as it goes in the URL (raw escapes included: a lone surrogate in WTF-8, an overlong '/'). */
const PATH_JUNK: Array<(f: Fuzz, real: string) => string> = [
  () => "", () => "..", () => ".", () => "%00", () => "%", () => "%zz", () => "%ED%A0%80", () => "%C0%AF", () => "%FF", () => "%2e%2e%2f",
  () => "0", () => "-1", () => "1e309", () => "9".repeat(40), () => "null", () => "undefined", () => "%20", () => "true",
  (f) => "x".repeat(1 + f.int(10_000)), () => encodeURIComponent("é 👍 \u200b 中文"), () => encodeURIComponent("../../etc/passwd"),
  () => "00000000-0000-0000-0000-000000000000", () => "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
  (_f, real) => real.toUpperCase(), (_f, real) => `${real}x`, (_f, real) => `%20${real}`, (_f, real) => real.slice(0, -1),
  (f) => encodeURIComponent(f.string().toWellFormed()),
];
/** Query value junk, as it goes in the URL. */
const QUERY_JUNK: Array<(f: Fuzz) => string> = [
  () => "", () => "%00", () => "%", () => "%ED%A0%80", () => "%FF", () => "-1", () => "0", () => "1.5", () => "1e309", () => "NaN", () => "Infinity",
  () => "9".repeat(30), () => "true", () => "null", () => "[]", () => "%5B%5D", () => "2026-02-30T00:00:00Z", () => "0000-01-01T00:00:00Z",
  (f) => "x".repeat(1 + f.int(5_000)), () => encodeURIComponent('"'), () => encodeURIComponent("status: os:"), () => encodeURIComponent("é 👍 中文"),
  (f) => encodeURIComponent(f.string().toWellFormed()),
];

type Body = { data?: string | Uint8Array<ArrayBuffer> | FormData | URLSearchParams; contentType?: string; shown: string };

/** Inputs for one operation, from its schemas and the fixtures' ids. */
class Inputs {
  constructor(private readonly f: Fuzz, private readonly pools: Record<string, string[]>, private readonly op: Operation) {}

  private uuid(): string {
    const f = this.f;
    return `${f.hex(8)}-${f.hex(4)}-4${f.hex(3)}-${f.pick(["8", "9", "a", "b"])}${f.hex(3)}-${f.hex(12)}`;
  }

  /** A fixture id of `pool` (or, sometimes, an id nobody has). */
  fromPool(pool: string, always = false, exclude: ReadonlySet<string> = new Set()): string {
    const ids = (this.pools[pool] ?? this.pools.anyIds!).filter((id) => !exclude.has(id));
    if (ids.length === 0 || (!always && this.f.chance(0.15))) return this.uuid();
    return this.f.pick(ids);
  }

  private chars(alphabet: string, n: number): string {
    let s = "";
    for (let i = 0; i < n; i++) s += alphabet[this.f.int(alphabet.length)];
    return s;
  }

  /** A value valid for `s`, as far as this generator can tell. */
  valid(s: JsonSchema, name: string, always: boolean, depth = 0): unknown {
    const f = this.f;
    if (s.const !== undefined) return s.const;
    if (s.enum) return f.pick(s.enum);
    const branches = s.anyOf ?? s.oneOf;
    if (branches) return this.valid(f.pick(branches), name, always, depth);
    const type = Array.isArray(s.type) ? f.pick(s.type.filter((t) => t !== "null")) : s.type ?? (s.properties ? "object" : "string");
    switch (type) {
      case "boolean":
        return f.chance(0.5);
      case "integer":
      case "number": {
        const lo = Math.max(s.minimum ?? 0, -(2 ** 53) + 1);
        const hi = Math.min(s.maximum ?? lo + 1_000, 2 ** 53 - 1);
        const wide = hi - lo > 1e9;
        const n = f.pick([lo, hi, wide ? Math.max(lo, Math.min(hi, Date.now())) : hi, lo + Math.floor(f.next() * Math.min(hi - lo + 1, 1_000))]);
        return type === "number" && f.chance(0.3) && n < hi ? n + 0.5 : n;
      }
      case "array": {
        const min = s.minItems ?? 0;
        const max = Math.min(s.maxItems ?? min + 3, min + 3);
        return Array.from({ length: min + f.int(max - min + 1) }, () => this.valid(s.items ?? {}, name, always, depth + 1));
      }
      case "object": {
        const out: Record<string, unknown> = {};
        const required = new Set(s.required ?? []);
        for (const [k, sub] of Object.entries(s.properties ?? {})) if (required.has(k) || always || f.chance(0.6)) out[k] = this.valid(sub, k, always, depth + 1);
        if (typeof s.additionalProperties === "object") {
          for (let n = f.int(3) + (always ? 1 : 0); n > 0; n--) out[f.chance(0.7) ? this.fromPool("users", true) : `k${f.int(100)}`] = this.valid(s.additionalProperties, "", always, depth + 1);
        }
        return out;
      }
      default:
        return this.validString(s, name, always);
    }
  }

  private validString(s: JsonSchema, name: string, always: boolean): string {
    const f = this.f;
    const pool = POOL_BY_NAME[name] ?? (s.format === "uuid" ? resourceOf(this.op) : undefined);
    if (pool) {
      const v = this.fromPool(pool, always);
      // A fixture's value may not fit the field (a support code is also six digits; a username
      // is not an id): kept only if it does.
      if (this.fits(s, v)) return v;
    }
    if (s.format === "uuid") return this.uuid();
    if (s.format === "date-time") return new Date(Date.now() + (1 + f.int(300)) * 86_400_000).toISOString();
    const min = s.minLength ?? 0;
    const max = Math.min(s.maxLength ?? 64, 256);
    const len = Math.max(min, Math.min(max, min + 1 + f.int(24)));
    const b64 = (n: number, url: boolean) => Buffer.from(Array.from({ length: n }, () => f.int(256))).toString(url ? "base64url" : "base64");
    const candidates: Array<() => string> = [
      // Exactly `len` characters of padded base64 (with an `=`: 44 are 32 bytes), or of base64url.
      () => b64(len % 4 === 0 ? (len / 4) * 3 - 1 : Math.floor((len * 3) / 4), false),
      () => b64(Math.floor((len * 3) / 4), true),
      () => `fuzz${this.chars(ALNUM, Math.max(0, len - 4))}`,
      () => this.chars("0123456789", len),
      () => this.chars("0123456789", 6),
      () => this.chars(CROCKFORD, 26),
      () => `é 👍 中文 ${this.chars(ALNUM, Math.max(0, len - 10))}`,
      () => `FUZZ-${this.chars(ALNUM, Math.max(0, len - 5))}`,
    ];
    // A string of one exact length is most likely an encoding (a key): base64 first. Otherwise
    // in an order of the seed's choosing. The first that fits.
    const first = min > 0 && min === s.maxLength ? candidates.splice(0, 2) : [];
    while (candidates.length > 0) first.push(candidates.splice(f.int(candidates.length), 1)[0]!);
    for (const candidate of first) {
      const v = candidate();
      if (this.fits(s, v)) return v;
    }
    return "fuzz";
  }

  private fits(s: JsonSchema, v: string): boolean {
    if (s.minLength !== undefined && v.length < s.minLength) return false;
    if (s.maxLength !== undefined && v.length > s.maxLength) return false;
    if (s.enum && !s.enum.includes(v)) return false;
    if (s.format === "uuid" && !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(v)) return false;
    return !s.pattern || new RegExp(s.pattern, "u").test(v);
  }

  /**
   * `valid` with one to three things wrong: a field dropped, of the wrong type, too long, out of
   * range, poisoned with NUL or a lone surrogate, nested very deep; an extra field. Deep nesting
   * is spliced into the JSON text afterwards (`raw`): building it as a value would overflow
   * this process's own JSON.stringify.
   */
  mutate(value: unknown, s: JsonSchema, raw: Map<string, string>, depth = 0): unknown {
    const f = this.f;
    const isObject = typeof value === "object" && value !== null && !Array.isArray(value);
    if (!isObject || f.chance(0.1)) return this.wrong(s, raw);
    const m = { ...(value as Record<string, unknown>) };
    const props = s.properties ?? {};
    for (let n = 1 + f.int(3); n > 0; n--) {
      const keys = [...new Set([...Object.keys(m), ...Object.keys(props)])];
      const key = keys.length > 0 ? f.pick(keys) : "x";
      const op = f.int(5);
      if (op === 0) delete m[key];
      else if (op === 1) m[f.pick(["x", "id", "tenant_id", "role", "__proto__", "constructor", "admin", "k\u0000", "\ud800", "é", ""])] = f.value(0, keys);
      else if (op === 2 && depth < 2 && typeof m[key] === "object" && m[key] !== null) m[key] = this.mutate(m[key], props[key] ?? {}, raw, depth + 1);
      else m[key] = this.wrong(props[key] ?? {}, raw);
    }
    return m;
  }

  /** A value that breaks `s` (or anything at all). */
  private wrong(s: JsonSchema, raw: Map<string, string>): unknown {
    const f = this.f;
    const placeholder = (text: string) => {
      const id = `__raw_${raw.size}_${f.hex(8)}__`;
      raw.set(id, text);
      return id;
    };
    const deep = () => {
      const d = f.pick([64, 1_000, 10_000, 100_000]);
      return placeholder(f.chance(0.5) ? `${"[".repeat(d)}1${"]".repeat(d)}` : `${'{"a":'.repeat(d)}1${"}".repeat(d)}`);
    };
    const options: Array<() => unknown> = [
      () => f.value(),
      () => f.pick(["a\u0000b", "\u0000", "\ud800", "x\udfff", "\udc00\ud800", "ok\u0000"]),
      () => "x".repeat((s.maxLength ?? 64) + 1),
      () => "y".repeat(f.pick([100_000, 1_000_000])),
      deep,
      () => placeholder(f.pick(["1e309", "-1e309", "1e-400", "123456789012345678901234567890", "-0", "0.0000001"])),
      () => f.pick([-1, 0, 1.5, 2 ** 53 + 1, -(2 ** 63), Number.MAX_VALUE, (s.maximum ?? 1e6) + 1, (s.minimum ?? 0) - 1]),
      () => String(s.minimum ?? 1),
      () => (s.enum ? `${String(f.pick(s.enum)).toUpperCase()} ` : f.string()),
      () => (s.items ? Array.from({ length: (s.maxItems ?? 50) + 1 }, () => this.valid(s.items!, "", false)) : [this.valid(s, "", false)]),
      () => ({ [f.pick(["$gt", "__proto__", "0"])]: this.valid(s, "", false) }),
    ];
    return f.pick(options)();
  }

  /** The request body for a call: valid, mutated, random, not JSON, or under another content type. */
  body(schema: JsonSchema | null, allValid: boolean): Body {
    const f = this.f;
    const json = (v: unknown, raw = new Map<string, string>()) => {
      let text = JSON.stringify(v) ?? "null";
      for (const [id, r] of raw) text = text.replaceAll(`"${id}"`, r);
      return text;
    };
    const shown = (text: string) => (text.length > 300 ? `${text.slice(0, 300)}… (${text.length} chars)` : text);
    if (!schema) {
      // No body documented: mostly none, sometimes one anyway.
      if (allValid || f.chance(0.75)) return { shown: "(none)" };
      const text = f.chance(0.5) ? json(f.value()) : "{not json";
      return { data: text, contentType: f.pick(["application/json", "text/plain", "application/x-www-form-urlencoded"]), shown: shown(text) };
    }
    const valid = this.valid(schema, "", allValid);
    if (allValid) return { data: json(valid), contentType: "application/json", shown: shown(json(valid)) };
    const pick = f.int(20);
    if (pick < 5) {
      const text = json(valid);
      return { data: text, contentType: "application/json", shown: shown(text) };
    }
    if (pick < 12) {
      const raw = new Map<string, string>();
      const text = json(this.mutate(valid, schema, raw), raw);
      return { data: text, contentType: "application/json", shown: shown(text) };
    }
    if (pick < 14) {
      const text = json(f.value());
      return { data: text, contentType: "application/json", shown: shown(text) };
    }
    if (pick < 17) {
      // Not JSON, or not quite.
      const good = json(valid);
      const options: Array<() => Body> = [
        () => ({ data: "{not json", shown: "{not json" }),
        () => ({ data: "", shown: "(empty)" }),
        () => ({ data: good.slice(0, f.int(good.length)), shown: `truncated ${good}` }),
        () => ({ data: `${good}garbage`, shown: `${good}garbage` }),
        () => ({ data: `\ufeff${good}`, shown: `BOM ${good}` }),
        () => ({ data: `{"a":1,"a":2,${good.slice(1)}`, shown: "duplicate keys" }),
        () => ({ data: `/* c */ ${good}`, shown: "a comment" }),
        () => ({ data: f.bytes(256), shown: "random bytes" }),
        () => ({ data: new Uint8Array([0x7b, 0x22, 0x6e, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0xc0, 0xaf, 0x22, 0x7d]), shown: '{"n":"<invalid UTF-8>"}' }),
        () => ({ data: `"${"\\ud800"}"`, shown: '"\\ud800"' }),
        () => ({ data: `{"name":"\\u0000"}`, shown: '{"name":"\\u0000"}' }),
      ];
      return { contentType: "application/json", ...f.pick(options)() };
    }
    // Another content type.
    const fields = Object.entries(typeof valid === "object" && valid !== null ? valid : { value: valid }).map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)] as [string, string]);
    const options: Array<() => Body> = [
      () => ({ data: json(valid), contentType: "text/plain", shown: `text/plain ${json(valid)}` }),
      () => ({ data: json(valid), contentType: f.pick(["application/xml", "application/octet-stream", "application/json; charset=latin1", "application/json, text/plain", "application/vnd.api+json", "*/*", ""]), shown: `odd content type ${json(valid)}` }),
      () => ({ data: new URLSearchParams(fields), shown: `form ${new URLSearchParams(fields)}` }),
      () => ({ data: "a=%&b=%ED%A0%80&c", contentType: "application/x-www-form-urlencoded", shown: "a=%&b=%ED%A0%80&c" }),
      () => {
        const form = new FormData();
        for (const [k, v] of fields) form.append(k, v);
        if (f.chance(0.5)) form.append("file", new Blob([f.bytes(64)]), "x.bin");
        return { data: form, shown: `multipart ${JSON.stringify(fields).slice(0, 200)}` };
      },
      () => ({ data: "--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n", contentType: f.pick(["multipart/form-data; boundary=x", "multipart/form-data"]), shown: "broken multipart" }),
    ];
    return f.pick(options)();
  }

  /** The query string: declared parameters valid, junk or absent, sometimes unknown or repeated ones. */
  query(allValid: boolean): string {
    const f = this.f;
    const pairs: string[] = [];
    for (const q of this.op.query) {
      if (!allValid && f.chance(0.5)) continue;
      if (allValid && !f.chance(0.5)) continue;
      const v = allValid || f.chance(0.6) ? encodeURIComponent(String(this.valid(q.schema, q.name, allValid))) : f.pick(QUERY_JUNK)(f);
      pairs.push(`${encodeURIComponent(q.name)}=${v}`);
      if (!allValid && f.chance(0.1)) pairs.push(`${encodeURIComponent(q.name)}=${f.pick(QUERY_JUNK)(f)}`);
    }
    if (!allValid && f.chance(0.2)) pairs.push(`${f.pick(["x", "__proto__", "limit", "cursor", "%00", "a[b]", "q[]"])}=${f.pick(QUERY_JUNK)(f)}`);
    return pairs.length > 0 ? `?${pairs.join("&")}` : "";
  }
}

type Credential = { label: string; headers: Record<string, string> };

interface Violation {
  seed: number;
  call: string;
  problem: string;
  status?: number;
  body?: string;
  response?: string;
}

for (const flavor of FLAVORS) {
  describe(`fuzzing every documented operation (${flavor}, seed ${SEED})`, () => {
    let app: TestApp;
    let ops: Operation[] = [];
    const { logger, errors } = errorCapture();
    const pools: Record<string, string[]> = {};
    /** The users and the API token the calls are made with: never what a call that may change it acts on (see below). */
    const kept = new Set<string>();
    const credentials = { lower: [] as Credential[], spareAdmin: [] as string[] };

    beforeAll(async () => {
      app = await startTestApp(flavor, { logger });
      const admin = app.adminToken;
      const call = async (method: string, path: string, body?: unknown, token = admin) => {
        const r = await app.call(method, path, { token, body });
        if (r.status >= 300) throw new Error(`fixture ${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
        return r.body;
      };
      const me = await call("GET", "/api/me");
      const tech = await app.user("technician");
      const auditor = await app.user("auditor");
      const endUser = await app.user("end_user");
      const secondAdmin = await app.user("admin");
      // Spare sessions of a second admin for the operation that ends its caller's session.
      credentials.spareAdmin = [secondAdmin.token, await app.login(secondAdmin.username, secondAdmin.password)];
      const spareTech = await call("POST", "/api/users", { username: "fuzz-spare-tech", role: "technician", password: "long enough password" });
      const spareEndUser = await call("POST", "/api/users", { username: "fuzz-spare-eu", role: "end_user", password: "long enough password" });
      const inDays = (d: number) => new Date(Date.now() + d * 86_400_000).toISOString();
      const apiToken = await call("POST", "/api/tokens", { name: "fuzz scoped", scopes: ["machines:read", "sessions:read", "rooms:read"], expires_at: inDays(30) });
      const spareTokens = [
        await call("POST", "/api/tokens", { name: "fuzz spare 1", scopes: ["users:read"], expires_at: inDays(30) }),
        await call("POST", "/api/tokens", { name: "fuzz spare 2", scopes: ["audit:read"], expires_at: inDays(30) }),
      ];
      const site = await siteWithKey(app);
      const machines = [await enrolledMachine(app, site), await enrolledMachine(app, site), await enrolledMachine(app, site)];
      await call("POST", `/api/users/${endUser.id}/grants`, { machine_id: machines[0]!.id });
      await call("POST", `/api/users/${spareEndUser.id}/grants`, { machine_id: machines[1]!.id });
      const agentKey = await call("POST", `/api/machines/${machines[2]!.id}/keys`);
      const session = await call("POST", "/api/sessions", { machine_id: machines[0]!.id });
      const viewerToken = await call("POST", `/api/sessions/${session.id}/viewer-token`, { access: "view" });
      const support = await call("POST", "/api/support-codes", {});
      const rooms = [
        await call("POST", "/api/rooms", { name: "fuzz plain" }),
        await call("POST", "/api/rooms", { name: "fuzz signed", policy: { persist: true, sign: true, encrypt: false } }),
        await call("POST", "/api/rooms", { name: "fuzz sealed", policy: { persist: false, sign: false, encrypt: true } }),
      ];
      await call("POST", `/api/rooms/${rooms[0].id}/members`, { user_id: tech.id, role: "member" });
      await call("POST", `/api/rooms/${rooms[0].id}/messages`, { body: "hello", client_id: "fuzz-1" });

      Object.assign(pools, {
        users: [me.id, tech.id, auditor.id, endUser.id, secondAdmin.id, spareTech.id, spareEndUser.id],
        usernames: ["admin", tech.username, spareTech.username],
        machines: machines.map((m) => m.id),
        sites: [site.id],
        siteCodes: [site.code],
        enrollmentKeys: [site.key],
        sessions: [session.id, support.session_id],
        rooms: [...rooms.map((r) => r.id), session.id],
        // None: a recording needs a terminal opened on a connected agent; these are ids nobody has.
        recordings: [],
        apiTokens: [apiToken.id, ...spareTokens.map((t) => t.id)],
        viewerTokens: [viewerToken.token_id],
        agentKeys: [agentKey.id],
        codes: [support.code],
        kinds: ["machine", "session", "room"],
      });
      pools.anyIds = [...pools.machines!, ...pools.sessions!, ...pools.rooms!, ...pools.users!, ...pools.sites!];
      for (const id of [me.id, tech.id, auditor.id, endUser.id, secondAdmin.id, apiToken.id]) kept.add(id);
      credentials.lower = [
        { label: "technician", headers: { authorization: `Bearer ${tech.token}` } },
        { label: "auditor", headers: { authorization: `Bearer ${auditor.token}` } },
        { label: "end user", headers: { authorization: `Bearer ${endUser.token}` } },
        { label: "scoped API token", headers: { authorization: `Bearer ${apiToken.token}` } },
      ];

      const r = await fetch(`${app.url}/api/openapi.json`);
      ops = operations(await r.json());
    }, 60_000);
    afterAll(async () => {
      await app?.close();
    });

    test("no server error, the error envelope on every 4xx, nothing logged as an error; then still ready", async () => {
      const f = new Fuzz(SEED);
      const violations: Violation[] = [];
      /** correlation id → the call, to say which call an error-level log line came from. */
      const calls = new Map<string, string>();
      const answered = new Map<string, Set<number>>();
      const odd = () => f.pick<Credential>([
        { label: "admin cookie from another site", headers: { cookie: `tether_session=${app.adminToken}`, origin: "https://evil.example" } },
        { label: "admin cookie", headers: { cookie: `other=1; tether_session=${app.adminToken}` } },
        { label: "malformed cookie", headers: { cookie: f.pick(["tether_session=%E0%A4%A", "tether_session=%", "tether_session=", "tether_session"]) } },
        { label: "agent key", headers: { authorization: `Bearer cak_${f.hex(64)}` } },
        { label: "enrollment key", headers: { authorization: `Bearer ${pools.enrollmentKeys![0]}` } },
        { label: "unknown token", headers: { authorization: `Bearer ${f.pick(["tss_", "tpat_"])}${f.hex(64)}` } },
        { label: "malformed authorization", headers: { authorization: f.pick(["Bearer", "Bearer ", "Basic YWRtaW46eA==", `bearer   ${app.adminToken}`, `Bearer ${app.adminToken}x`, "x".repeat(4_000)]) } },
      ]);

      expect(ops.length).toBeGreaterThan(60);
      // The operations moved to the end are still there under these names (or the guard is gone).
      for (const name of [...LAST, ...ENDS_OWN_SESSION]) expect(ops.map((o) => o.name)).toContain(name);
      for (const op of ops) {
        const inputs = new Inputs(f, pools, op);
        const statuses = new Set<number>();
        answered.set(op.name, statuses);
        for (let i = 0; i < PER_OP; i++) {
          const slot = i % 8;
          // The first call is valid throughout (real ids, a valid body and query) and the admin's.
          const allValid = i === 0;
          const admin = ENDS_OWN_SESSION.has(op.name)
            ? { label: "spare admin session", headers: { authorization: `Bearer ${credentials.spareAdmin[i % credentials.spareAdmin.length]}` } }
            : { label: "admin", headers: { authorization: `Bearer ${app.adminToken}` } };
          const who: Credential = slot < 5 ? admin : slot === 5 ? { label: "no credential", headers: {} } : slot === 6 ? f.pick(credentials.lower) : odd();

          let path = op.path;
          const filled: Record<string, string> = {};
          for (const [n, param] of op.pathParams.entries()) {
            const pool = pathParamPool(op, param, filled);
            // What a call acts on is named by its last path parameter: there, a call that may
            // change it does not get the credentials' own users and token (resetting the admin's
            // password, disabling the technician, revoking the scoped token).
            const exclude = op.method !== "GET" && n === op.pathParams.length - 1 ? kept : new Set<string>();
            const real = inputs.fromPool(pool, allValid, exclude);
            filled[param] = real;
            const value = allValid || f.chance(0.6) ? encodeURIComponent(real) : f.pick(PATH_JUNK)(f, real);
            path = path.replace(`{${param}}`, value);
          }
          path += inputs.query(allValid);
          // fetch() sends no body with a GET.
          const body: Body = op.method === "GET" ? { shown: "(none)" } : inputs.body(op.body, allValid);
          const headers: Record<string, string> = { ...who.headers };
          if (body.contentType) headers["content-type"] = body.contentType;
          if (f.chance(0.1)) headers[CORRELATION_HEADER] = f.pick(["fuzz-correlation", "", "x".repeat(65), "bad id!", "../.."]);
          if (f.chance(0.1)) headers["last-event-id"] = f.pick(["", "0", "x".repeat(100), "01ARZ3NDEKTSV4RRFFQ69G5FAV", "%00", "é"]);
          const label = `${op.name} #${i} as ${who.label}: ${op.method} ${path.length > 300 ? `${path.slice(0, 300)}…` : path}`;

          let res: Response;
          try {
            res = await fetch(app.url + path, { method: op.method, headers, body: body.data, redirect: "manual", signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
          } catch (err) {
            violations.push({ seed: SEED, call: label, problem: `no answer: ${(err as Error).message}`, body: body.shown });
            continue;
          }
          statuses.add(res.status);
          const correlationId = res.headers.get(CORRELATION_HEADER);
          if (correlationId) calls.set(correlationId, label);
          const type = res.headers.get("content-type") ?? "";
          // Streams (SSE, the agent binary, a cast) are not read to the end: only errors and JSON are.
          const text = res.status >= 400 || type.includes("json") ? await res.text() : (await res.body?.cancel(), "");
          if (res.status >= 500) {
            violations.push({ seed: SEED, call: label, problem: "server error", status: res.status, body: body.shown, response: text.slice(0, 500) });
          } else if (res.status >= 400) {
            let envelope: unknown;
            try {
              envelope = JSON.parse(text);
            } catch {}
            const parsed = ErrorEnvelope.strict().safeParse(envelope);
            const problem = !parsed.success ? "not the error envelope"
              : parsed.data.status_code !== res.status ? "status_code is not the status"
              : parsed.data.correlation_id !== correlationId ? "correlation_id is not the response's"
              : !type.startsWith("application/json") ? `error content type ${type}`
              : null;
            if (problem) violations.push({ seed: SEED, call: label, problem, status: res.status, body: body.shown, response: text.slice(0, 500) });
          }
        }
      }

      // Access-log lines are written after the response; give the last ones their turn.
      await Bun.sleep(50);
      for (const line of errors.splice(0)) {
        let parsed: { correlationId?: string; msg?: string; err?: unknown } = {};
        try {
          parsed = JSON.parse(line);
        } catch {}
        violations.push({ seed: SEED, call: (parsed.correlationId && calls.get(parsed.correlationId)) || "(no call)", problem: "logged at error level", response: line.slice(0, 1_000) });
      }
      expect({ seed: SEED, violations: violations.length, first: violations.slice(0, 20) }).toEqual({ seed: SEED, violations: 0, first: [] });

      // Every operation was called, and the fixtures let the fuzzing past authorization and
      // validation often enough to mean something.
      expect([...answered.keys()].sort()).toEqual(ops.map((o) => o.name).sort());
      const reachedHandler = [...answered.values()].filter((s) => [...s].some((x) => x < 400 || (x !== 400 && x !== 401 && x !== 403))).length;
      expect(reachedHandler).toBeGreaterThan(ops.length * 0.8);
      if (process.env.FUZZ_VERBOSE) for (const [name, s] of answered) console.log(name, [...s].sort().join(" "));

      await expectReady(app, errors);
      expect((await app.call("GET", "/api/version")).status).toBe(200);
    }, 120_000);
  });
}
