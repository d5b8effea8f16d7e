import { Inventory } from "../protocol/agent.ts";
import type { MachineLabels } from "../protocol/machines.ts";

/** Small conversions from database rows to wire values, shared by the machines and sites areas. */

export const iso = (v: Date | string) => new Date(v).toISOString();
export const isoOrNull = (v: Date | string | null | undefined) => (v === null || v === undefined ? null : iso(v));

/** A jsonb labels value (from either driver, or written by hand) in its full shape. */
export function labelsOf(raw: unknown): MachineLabels {
  const o = (typeof raw === "string" ? JSON.parse(raw) : raw ?? {}) as Partial<Record<keyof MachineLabels, unknown>>;
  const str = (v: unknown) => (typeof v === "string" ? v : "");
  return {
    company: str(o.company),
    site: str(o.site),
    department: str(o.department),
    device_type: str(o.device_type),
    tags: Array.isArray(o.tags) ? o.tags.filter((t): t is string => typeof t === "string") : [],
  };
}

/**
 * A jsonb inventory as the API shows it: what the last status report said, or {} before the
 * first one. The column was validated on the way in; anything that no longer parses (a hand edit,
 * an older agent's shape) is shown as {} rather than failing the whole list.
 */
export function inventoryOf(raw: unknown): Inventory {
  const parsed = Inventory.safeParse(typeof raw === "string" ? JSON.parse(raw) : raw ?? {});
  return parsed.success ? parsed.data : {};
}
