import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PERMISSIONS, ROLE_PERMISSIONS, ROLES } from "../../src/auth/roles.ts";

test("docs/PERMISSIONS.md states exactly the matrix the code enforces", () => {
  const doc = readFileSync(join(import.meta.dir, "..", "..", "docs", "PERMISSIONS.md"), "utf8");
  const rows = new Map<string, string[]>();
  for (const line of doc.split("\n")) {
    const m = line.match(/^\| `([a-z_]+:[a-z]+)` \|(.*)$/);
    if (m) rows.set(m[1]!, m[2]!.split("|").slice(0, ROLES.length).map((c) => c.trim()));
  }
  expect([...rows.keys()].sort()).toEqual([...PERMISSIONS].sort());
  for (const [permission, cells] of rows) {
    ROLES.forEach((role, i) => {
      expect({ permission, role, granted: cells[i]!.startsWith("✓") }).toEqual({ permission, role, granted: ROLE_PERMISSIONS[role].has(permission as never) });
    });
  }
});

test("end users are denied by default: their granted machines, their own sessions and the rooms they are members of", () => {
  expect([...ROLE_PERMISSIONS.end_user]).toEqual(["machines:read", "sessions:read", "sessions:write", "rooms:read", "rooms:write"]);
});
