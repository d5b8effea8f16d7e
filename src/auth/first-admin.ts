import type { Logger } from "../log.ts";
import type { Store } from "../store/store.ts";
import { audit } from "../audit/audit.ts";
import { randomHex } from "./secrets.ts";
import { DEFAULT_TENANT_ID } from "./tenants.ts";
import { createUser } from "./users.ts";

/**
 * On the very first start (no user anywhere), creates `admin` with TETHER_ADMIN_PASSWORD or a
 * random password printed once to the console. There is no unauthenticated setup endpoint.
 * Returns the generated password, if one was.
 */
export async function ensureFirstAdmin(store: Store, log: Logger, password: string | undefined): Promise<{ created: boolean; generated?: string }> {
  const [row] = await store.query<{ n: number }>("select count(*)::int as n from users");
  if (Number(row?.n ?? 0) > 0) return { created: false };
  const generated = password ? undefined : randomHex(12);
  const user = await createUser(store, DEFAULT_TENANT_ID, { username: "admin", displayName: "Administrator", role: "admin", password: password ?? generated! });
  await audit(store, { tenantId: DEFAULT_TENANT_ID, type: "user.created", actor: { type: "system", name: "first start" }, target: { type: "user", id: user.id }, details: { username: "admin", role: "admin", password_source: password ? "environment" : "generated" } });
  log.info({ user_id: user.id }, "first admin created");
  return { created: true, generated };
}
