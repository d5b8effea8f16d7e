/**
 * Machine search (M5): the `q` language, the opaque keyset cursor, and the SQL they become.
 *
 * `q` is whitespace-separated terms, all of which must match (AND). A term is a
 * case-insensitive substring of any attribute (`machines.search_doc`, kept by triggers, plus the
 * site's code and name), or, with a scope (`host:` `os:` `user:` `ip:` `tag:` `site:`
 * `status:`), of that attribute only. `"two words"` (also `os:"windows 11"`) is one term. An
 * unknown `word:` prefix is no scope: `aa:bb:cc` is searched as it is (MAC addresses, IPv6).
 * Every scoped term is also required of `search_doc`, so the trigram index narrows every term.
 * A machine's status is matched on `machine_presence.status` (as `p`), not in `search_doc`,
 * which presence updates must leave alone (schema versions 9 and 16).
 */

export const SCOPES = ["host", "os", "user", "ip", "tag", "site", "status"] as const;
export type Scope = (typeof SCOPES)[number];
export interface Term {
  scope: Scope | null;
  value: string;
}

export const MAX_TERMS = 16;
const STATUS_VALUES = ["online", "offline", "pending", "disabled"];
/** The values of machine_presence.status (pending is machines.enrollment_state, disabled machines.disabled_at). */
const STATUSES = STATUS_VALUES.filter((s) => s !== "pending" && s !== "disabled");

export class QueryError extends Error {}

/** Parses `q` into terms; throws QueryError with a message for the client. */
export function parseQ(q: string): Term[] {
  const terms: Term[] = [];
  let i = 0;
  while (i < q.length) {
    if (/\s/.test(q[i]!)) {
      i++;
      continue;
    }
    let scope: Scope | null = null;
    const m = /^([A-Za-z]+):/.exec(q.slice(i, i + 16));
    if (m && (SCOPES as readonly string[]).includes(m[1]!.toLowerCase())) {
      scope = m[1]!.toLowerCase() as Scope;
      i += m[0].length;
    }
    let raw: string;
    if (q[i] === '"') {
      const end = q.indexOf('"', i + 1);
      raw = q.slice(i + 1, end < 0 ? undefined : end);
      i = end < 0 ? q.length : end + 1;
    } else {
      let j = i;
      while (j < q.length && !/\s/.test(q[j]!)) j++;
      raw = q.slice(i, j);
      i = j;
    }
    const value = raw.trim().replace(/\s+/g, " ");
    if (!value) {
      if (scope) throw new QueryError(`${scope}: needs a value`);
      continue;
    }
    if (scope === "status" && !STATUS_VALUES.includes(value.toLowerCase()))
      throw new QueryError(`status: must be one of ${STATUS_VALUES.join(", ")}`);
    terms.push({ scope, value });
  }
  if (terms.length > MAX_TERMS) throw new QueryError(`at most ${MAX_TERMS} terms`);
  return terms;
}

export const SORTS = ["hostname", "last_seen", "created"] as const;
export type Sort = (typeof SORTS)[number];
export type Order = "asc" | "desc";

/** Where a page ended: the sort it belongs to, the last row's sort key (as text) and id. */
export interface Cursor {
  sort: Sort;
  order: Order;
  key: string;
  id: string;
}

export function encodeCursor(c: Cursor): string {
  return Buffer.from(JSON.stringify([1, c.sort, c.order, c.key, c.id])).toString("base64url");
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const TIMESTAMP = /^(-infinity|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z)$/;

/** Whether a TIMESTAMP-shaped key names a real instant (no month 13, no 31 February, no year 0). */
function realTimestamp(key: string): boolean {
  const ms = key.slice(0, 23);
  const d = new Date(`${ms}Z`);
  return !key.startsWith("0000") && !Number.isNaN(d.getTime()) && d.toISOString().slice(0, 23) === ms;
}

/** The cursor, or null when it is not one of ours. */
export function decodeCursor(s: string): Cursor | null {
  try {
    if (!/^[A-Za-z0-9_-]+$/.test(s)) return null;
    const v = JSON.parse(Buffer.from(s, "base64url").toString("utf8"));
    if (!Array.isArray(v) || v.length !== 5 || v[0] !== 1) return null;
    const [, sort, order, key, id] = v;
    if (!(SORTS as readonly unknown[]).includes(sort) || (order !== "asc" && order !== "desc")) return null;
    if (typeof key !== "string" || key.length > 1024 || typeof id !== "string" || !UUID.test(id)) return null;
    if (sort !== "hostname" && !TIMESTAMP.test(key)) return null;
    // The key goes to the database as is: one it cannot take (a NUL, an impossible date) is a
    // forged cursor, refused here rather than failing the query.
    if (sort === "hostname" && (key.includes("\u0000") || !key.isWellFormed())) return null;
    if (sort !== "hostname" && key !== "-infinity" && !realTimestamp(key)) return null;
    return { sort, order, key, id };
  } catch {
    return null;
  }
}

/** `%value%` for LIKE, with the value's own wildcards escaped (backslash is LIKE's default escape). */
export const likeContains = (value: string) => `%${value.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;

/** SQL per sort (keys travel as text: a driver that sees a timestamptz parameter may round it to milliseconds): the ordering expression, the same key as text (exact, for the cursor), and the cursor's key back as a value. */
const SORT_SQL: Record<Sort, { expr: string; key: string; decode: (p: string) => string }> = {
  hostname: { expr: "lower(m.hostname)", key: "lower(m.hostname)", decode: (p) => `${p}::text` },
  created: {
    expr: "m.created_at",
    key: `to_char(m.created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`,
    decode: (p) => `${p}::text::timestamptz`,
  },
  last_seen: {
    // Never seen sorts before everything seen (first ascending, last descending).
    expr: "coalesce(p.last_seen_at, '-infinity'::timestamptz)",
    key: `case when p.last_seen_at is null then '-infinity' else to_char(p.last_seen_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') end`,
    decode: (p) => `${p}::text::timestamptz`,
  },
};

const jsonStrings = (path: string) =>
  `jsonb_array_elements_text(case when jsonb_typeof(${path}) = 'array' then ${path} else '[]'::jsonb end)`;

/** Ids of the tenant's sites whose code or display name contains the pattern, as an array (an init plan, so the site_id index can take it). */
const sitesMatching = (pat: string) =>
  `m.site_id = any(array(select s.id from sites s where s.tenant_id = $1 and (lower(s.site_code) like ${pat} or lower(s.display_name) like ${pat})))`;

/** One term's condition; `p` binds a parameter and returns its placeholder. */
export function termSql(t: Term, p: (v: unknown) => string): string {
  if (t.scope === "status") {
    const v = t.value.toLowerCase();
    if (v === "pending") return "m.enrollment_state = 'pending'";
    if (v === "disabled") return "m.disabled_at is not null";
    return `p.status = ${p(v)}`;
  }
  const pat = `lower(${p(likeContains(t.value))})`;
  const doc = `m.search_doc like ${pat}`;
  switch (t.scope) {
    case null: {
      // Status is not in search_doc (it changes at every connect; schema version 9): a term
      // that could be part of one matches the column too.
      const v = t.value.toLowerCase();
      const status = STATUSES.some((s) => s.includes(v)) ? ` or p.status like ${pat}` : "";
      return `(${doc} or ${sitesMatching(pat)}${status})`;
    }
    case "host":
      return `(${doc} and lower(m.hostname) like ${pat})`;
    case "os":
      return `(${doc} and lower(coalesce(m.inventory->'os'->>'name', '') || ' ' || coalesce(m.inventory->'os'->>'version', '')) like ${pat})`;
    case "user":
      return `(${doc} and exists (select 1 from ${jsonStrings("m.inventory->'users'")} as u(v) where lower(u.v) like ${pat}))`;
    case "ip":
      return `(${doc} and (lower(coalesce(m.external_ip, '')) like ${pat} or exists (select 1 from ${jsonStrings("m.inventory->'private_ips'")} as a(v) where lower(a.v) like ${pat})))`;
    case "tag":
      return `(${doc} and exists (select 1 from ${jsonStrings("m.labels->'tags'")} as g(v) where lower(g.v) like ${pat}))`;
    case "site":
      return `(lower(coalesce(m.labels->>'site', '')) like ${pat} or ${sitesMatching(pat)})`;
  }
}

export interface SearchFilters {
  q?: string;
  site_id?: string;
  status?: "online" | "offline";
  tag?: string;
  enrollment_state?: "active" | "pending";
  sort: Sort;
  order: Order;
  limit: number;
  cursor?: Cursor;
}

/**
 * The WHERE additions, ORDER BY and LIMIT of one page, given the visibility condition already
 * using $1..$3. Returns the SQL tail and the extra parameters (numbered from $4).
 */
export function searchSql(f: SearchFilters, firstParams: readonly unknown[]): { where: string; order: string; keySelect: string; params: unknown[] } {
  const params = [...firstParams];
  const p = (v: unknown) => {
    params.push(v);
    return `$${params.length}`;
  };
  const conds: string[] = [];
  for (const t of parseQ(f.q ?? "")) conds.push(termSql(t, p));
  if (f.site_id) conds.push(`m.site_id = ${p(f.site_id)}::uuid`);
  if (f.status) conds.push(`p.status = ${p(f.status)}`);
  if (f.enrollment_state) conds.push(`m.enrollment_state = ${p(f.enrollment_state)}`);
  if (f.tag) conds.push(`m.labels->'tags' @> jsonb_build_array(${p(f.tag)}::text)`);
  const s = SORT_SQL[f.sort];
  const dir = f.order === "asc" ? "asc" : "desc";
  if (f.cursor) conds.push(`(${s.expr}, m.id) ${dir === "asc" ? ">" : "<"} (${s.decode(p(f.cursor.key))}, ${p(f.cursor.id)}::uuid)`);
  return {
    where: conds.map((c) => ` and ${c}`).join(""),
    order: ` order by ${s.expr} ${dir}, m.id ${dir} limit ${p(f.limit + 1)}`,
    keySelect: `${s.key} as sort_key`,
    params,
  };
}
