/**
 * Text that PostgreSQL cannot store: U+0000 (neither `text` nor `jsonb` holds it) and unpaired
 * UTF-16 surrogates (`jsonb` refuses them). Every string from outside (HTTP bodies, queries and
 * path parameters; agents' and viewers' control frames) is checked at the edge, so such input
 * gets a clear refusal instead of failing a write later, where a journal group commit would
 * have taken other actors' events down with it.
 */
const storable = (s: string) => !s.includes("\u0000") && s.isWellFormed();

/** A value still to be checked, with where it is: its key in its parent (paths are spelled only for a finding). */
interface Visit {
  v: unknown;
  key: string | number | null;
  parent: Visit | null;
}

/** The path to `at`, spelled as it always was: "inventory.users[2]", "" for the value itself. */
const pathOf = (at: Visit): string => {
  const keys: Array<string | number> = [];
  for (let n: Visit | null = at; n && n.key !== null; n = n.parent) keys.push(n.key);
  let path = "";
  for (let i = keys.length - 1; i >= 0; i--) {
    const k = keys[i]!;
    path = typeof k === "number" ? `${path}[${k}]` : path ? `${path}.${k}` : k;
  }
  return path;
};

/** Whether `v` is an object whose fields are walked: not bytes. (Arrays are taken first, by index.) */
const walksInto = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !ArrayBuffer.isView(v) && !(v instanceof ArrayBuffer);

/**
 * Whether every string in `value`, object keys included, is storable: the common case, walked
 * without keeping where each value is (every agent's proof and status passes here).
 */
function allStorable(value: unknown): boolean {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === "string") {
      if (!storable(v)) return false;
    } else if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) stack.push(v[i]);
    } else if (walksInto(v)) {
      for (const k in v) {
        if (!Object.hasOwn(v, k)) continue;
        if (!storable(k)) return false;
        stack.push(v[k]);
      }
    }
  }
  return true;
}

/**
 * Where the first unstorable string (value or object key) in `value` is, as a path
 * ("inventory.users[2]"; "" for `value` itself), or null if there is none. Bytes are not text
 * and are not looked into. Walks with a stack of its own, so deep nesting cannot overflow; the
 * path is worked out only for a value that has such a string.
 */
export function unstorableAt(value: unknown): string | null {
  if (allStorable(value)) return null;
  const stack: Visit[] = [{ v: value, key: null, parent: null }];
  while (stack.length > 0) {
    const at = stack.pop()!;
    const v = at.v;
    if (typeof v === "string") {
      if (!storable(v)) return pathOf(at);
    } else if (Array.isArray(v)) {
      for (let i = v.length - 1; i >= 0; i--) stack.push({ v: v[i], key: i, parent: at });
    } else if (walksInto(v)) {
      for (const k in v) {
        if (!Object.hasOwn(v, k)) continue;
        if (!storable(k)) {
          const path = pathOf(at);
          return path ? `${path}.<key>` : "<key>"; // the key itself is not echoed
        }
        stack.push({ v: v[k], key: k, parent: at });
      }
    }
  }
  return null;
}

/** A copy of JSON-like `value` with every string, object keys included, passed through `f`. */
export function mapStrings<T>(value: T, f: (s: string) => string): T {
  if (typeof value === "string") return f(value) as T;
  if (Array.isArray(value)) return value.map((v) => mapStrings(v, f)) as T;
  if (typeof value === "object" && value !== null) return Object.fromEntries(Object.entries(value).map(([k, v]) => [f(k), mapStrings(v, f)])) as T;
  return value;
}
