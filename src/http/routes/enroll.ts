import { createHash } from "node:crypto";
import { Elysia } from "elysia";
import { addressKey } from "../../auth/client-ip.ts";
import { audit } from "../../audit/audit.ts";
import { verifyNothing } from "../../auth/passwords.ts";
import { DEFAULT_TENANT_ID } from "../../auth/tenants.ts";
import { enroll, type EnrollOutcome } from "../../enrollment/enroll.ts";
import { EnrollRequest, EnrollResponse } from "../../protocol/machines.ts";
import { requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";

const tags = ["enrollment"];

/** Caller-chosen text that happens to look like a secret is not written to the audit log as is. */
const redact = (s: string) => s.replace(/\b(tss|tpat|cak|cek)_[0-9a-f]{16,}/gi, "$1_[redacted]");

/**
 * `POST /api/enroll` (M1): public, no login credential; the site's enrollment key is the
 * credential. Limited per (site_code, client IP), with a lockout after consecutive failures
 * (each 401 is one; any accepted key resets the streak). Every disposition is audited with the
 * machine_uid, site code, key version and fingerprint and the client IP, never key material.
 */
export const enrollRoutes = (deps: AppDeps) => {
  // Make the timing equalizer's throwaway hash now, so the first rejection does not pay for it.
  void verifyNothing("").catch(() => {});
  return new Elysia({ name: "enroll-routes" })
    .use(requestContext(deps))
    .post("/api/enroll", async (ctx) => {
      const { body, ip, correlationId, set } = ctx;
      const limitKey = `${body.site_code}\u0000${addressKey(ip)}`;
      const hostname = redact(body.hostname);
      const base = { machine_uid: redact(body.machine_uid), hostname, site: redact(body.site_code) };

      const verdict = deps.limiters.enroll.check(limitKey);
      if (!verdict.ok) {
        await audit(deps.store, {
          tenantId: DEFAULT_TENANT_ID, type: "enroll.rate_limited", outcome: "failure", actor: { type: "anonymous", name: hostname },
          ip, correlationId, details: { ...base, reason: verdict.reason, retry_after_s: verdict.retryAfterSec },
        });
        throw new HttpError(429, "RATE_LIMITED", "too many enrollment attempts; retry later", { "retry-after": String(verdict.retryAfterSec) });
      }

      const o = await enroll(deps.store, body, ip);
      const record = (extra: Record<string, unknown>) => {
        const machineId = "machineId" in o ? o.machineId : undefined;
        return audit(deps.store, {
          tenantId: o.tenantId, type: `enroll.${o.kind}`, outcome: o.kind === "new" || o.kind === "reuse" ? "success" : "failure",
          actor: machineId ? { type: "agent", id: machineId, name: hostname } : { type: "anonymous", name: hostname },
          target: machineId ? { type: "machine", id: machineId } : null,
          ip, correlationId, details: { ...base, disposition: o.kind, ...siteDetails(o), ...extra },
        });
      };

      if (o.kind === "rejected") {
        const lockedOut = deps.limiters.enroll.failure(limitKey);
        await record({ reason: o.reason, locked_out: lockedOut });
        throw new HttpError(401, "ENROLL_REJECTED", "enrollment rejected");
      }
      deps.limiters.enroll.success(limitKey);
      if (o.kind === "site_conflict") {
        await record({ bound_site_id: o.boundSiteId });
        deps.log.warn({ correlationId, machine_id: o.machineId, site_id: o.site.id, bound_site_id: o.boundSiteId }, "[ENROLL] machine_uid is bound to another site; refused");
        throw new HttpError(409, "ENROLL_SITE_CONFLICT", "this machine is enrolled at another site; an admin must remove it there first");
      }
      if (o.kind === "collision_pending") {
        // Which key claims the machine: what tells claimants apart in the log.
        const claimant = createHash("sha256").update(Buffer.from(body.public_key, "base64")).digest("hex").slice(0, 16);
        await record({ request_id: o.requestId, claimant_key_fingerprint: claimant, ...(o.competing ? { competing: true } : {}) });
        if (o.competing) deps.log.warn({ correlationId, machine_id: o.machineId, request_id: o.requestId }, "[ENROLL] clone-looking enrollment while another claim waits; that claim is kept");
        else deps.log.warn({ correlationId, machine_id: o.machineId }, "[ENROLL] clone-looking enrollment waits for an admin");
        set.status = 202;
        return { machine_id: o.machineId, enrollment_state: "pending" as const, disposition: "collision_pending" as const };
      }
      await record({ agent_key_id: o.keyId, revived: o.revived, revoked_keys: o.revokedKeys, ...(o.revokedGrants ? { grants_revoked: o.revokedGrants } : {}) });
      set.status = o.kind === "new" ? 201 : 200;
      return { machine_id: o.machineId, key: o.key, enrollment_state: o.enrollmentState, disposition: o.kind };
    }, {
      body: EnrollRequest,
      response: { 200: EnrollResponse, 201: EnrollResponse, 202: EnrollResponse },
      detail: {
        tags, security: [],
        summary: "Enroll a machine with its site's enrollment key (public)",
        description: "201 new (agent key, once); 200 reuse (same machine_uid at the same site, or a removed machine at any site: same row, earlier agent keys revoked, a removed machine revived); 202 collision_pending (no key; an admin approves or rejects); 401 ENROLL_REJECTED (unknown site, wrong, retired or missing key: identical body and cost); 409 ENROLL_SITE_CONFLICT (a live machine of another site); 429 with Retry-After. The site code is looked up across tenants: this endpoint has no tenant.",
      },
    });
};

function siteDetails(o: EnrollOutcome): Record<string, unknown> {
  if (!o.site) return {};
  return { site_id: o.site.id, ...(o.site.keyVersion === null ? {} : { key_version: o.site.keyVersion, key_fingerprint: o.site.keyFingerprint }) };
}
