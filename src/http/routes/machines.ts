import { Elysia } from "elysia";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { listAgentKeys, mintAgentKey, publicAgentKey, revokeAgentKey } from "../../machines/agent-keys.ts";
import { QueryError } from "../../machines/search.ts";
import { decidePending, getMachine, listMachines, liveSessionsOf, type MachineRow, type Viewer, pendingRequest, publicMachine, publicPendingRequest, type RemovedMachine, removeMachines, setMachineDisabled } from "../../machines/machines.ts";
import { Uuid } from "../../protocol/accounts.ts";
import { AgentKey, BulkDeleteRequest, BulkDeleteResponse, ListMachinesQuery, Machine, MachineDetail, MachineList, MintedAgentKey } from "../../protocol/machines.ts";
import { actorOf, authorize, requestContext, type RequestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { endSessionsOnLostAccess, leaveSessionRoomsOnLostGrant } from "../../sessions/access-lost.ts";
import type { Principal } from "../../auth/principal.ts";

const tags = ["machines"];
const IdParams = z.object({ id: Uuid });
const KeyParams = z.object({ id: Uuid, key_id: Uuid });
const notFound = () => new HttpError(404, "MACHINE_NOT_FOUND", "no such machine");

/**
 * Machines of the caller's tenant (M6): list and read (an end user: only granted machines),
 * remove (soft, one or up to 500, taking back their grants), disable and enable, approve or
 * reject a clone-looking enrollment; and each machine's agent keys (M2): mint, list, revoke.
 */
export const machineRoutes = (deps: AppDeps) =>
  new Elysia({ name: "machine-routes" })
    .use(requestContext(deps))
    .get("/api/machines", async (ctx) => {
      const me = await authorize(ctx, "machines:read");
      let page: Awaited<ReturnType<typeof listMachines>>;
      try {
        page = await listMachines(deps.store, me, ctx.query);
      } catch (e) {
        if (e instanceof QueryError) throw new HttpError(400, "VALIDATION_FAILED", `query.${e.message}`);
        throw e;
      }
      const live = await liveSessionsOf(deps.store, me, page.machines.map((m) => m.id));
      return { machines: page.machines.map((m) => publicMachine(m, live)), next_cursor: page.next_cursor };
    }, { query: ListMachinesQuery, response: { 200: MachineList }, detail: { tags, summary: "Search and list machines: q, filters, sort, cursor pages (an end user sees only the machines granted to them)" } })

    .get("/api/machines/:id", async (ctx) => {
      const me = await authorize(ctx, "machines:read");
      const machine = await getMachine(deps.store, me, ctx.params.id);
      if (!machine) throw notFound();
      // The claimant's details are for those who may decide, not for an end user.
      const pending = machine.enrollment_state === "pending" && me.role !== "end_user" ? await pendingRequest(deps.store, me.tenantId, machine.id) : null;
      return { ...(await withLive(deps, me, machine)), pending_request: pending ? publicPendingRequest(pending) : null };
    }, { params: IdParams, response: { 200: MachineDetail }, detail: { tags, summary: "One machine, with the enrollment waiting for approval if any" } })

    .delete("/api/machines/:id", async (ctx) => {
      const me = await authorize(ctx, "machines:write");
      const removed = await removeMachines(deps.store, me.tenantId, [ctx.params.id]);
      if (removed.length === 0) throw notFound();
      await afterRemoval(deps, ctx, me, removed, false);
      ctx.set.status = 204;
    }, { params: IdParams, detail: { tags, summary: "Remove a machine (soft delete; its agent keys are revoked and its grants taken back; re-enrolling brings it back)" } })

    .post("/api/machines/bulk-delete", async (ctx) => {
      const me = await authorize(ctx, "machines:write");
      const removed = await removeMachines(deps.store, me.tenantId, ctx.body.ids);
      await afterRemoval(deps, ctx, me, removed, true);
      const done = new Set(removed.map((r) => r.id));
      return { removed: [...done], not_found: [...new Set(ctx.body.ids)].filter((id) => !done.has(id)) };
    }, { body: BulkDeleteRequest, response: { 200: BulkDeleteResponse }, detail: { tags, summary: "Remove up to 500 machines at once, each audited" } })

    .post("/api/machines/:id/disable", async (ctx) => setDisabled(deps, ctx, true),
      { params: IdParams, response: { 200: Machine }, detail: { tags, summary: "Disable a machine: its agent is disconnected within a second and refused until enabled (close 4011); its live sessions end (removal)" } })

    .post("/api/machines/:id/enable", async (ctx) => setDisabled(deps, ctx, false),
      { params: IdParams, response: { 200: Machine }, detail: { tags, summary: "Enable a disabled machine: its agent connects again with the keys it has" } })

    .post("/api/machines/:id/approve", async (ctx) => decide(deps, ctx, "approve"),
      { params: IdParams, response: { 200: Machine }, detail: { tags, summary: "Approve a clone-looking enrollment: the claimant becomes the machine (earlier agent keys are revoked)" } })

    .post("/api/machines/:id/reject", async (ctx) => decide(deps, ctx, "reject"),
      { params: IdParams, response: { 200: Machine }, detail: { tags, summary: "Reject a clone-looking enrollment: the machine stays as it was, the claimant's key is refused" } })

    .post("/api/machines/:id/keys", async (ctx) => {
      const me = await authorize(ctx, "agent_keys:write");
      const machine = await getMachine(deps.store, me, ctx.params.id);
      if (!machine) throw notFound();
      const minted = await mintAgentKey(deps.store, me.tenantId, machine.id, me.userId);
      await audit(deps.store, { tenantId: me.tenantId, type: "agent_key.minted", actor: actorOf(me), target: { type: "machine", id: machine.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { agent_key_id: minted.id, key_prefix: minted.prefix } });
      ctx.set.status = 201;
      return minted;
    }, { params: IdParams, response: { 201: MintedAgentKey }, detail: { tags, summary: "Mint an agent key for a machine (cak_…, shown once)" } })

    .get("/api/machines/:id/keys", async (ctx) => {
      const me = await authorize(ctx, "agent_keys:read");
      const machine = await getMachine(deps.store, me, ctx.params.id);
      if (!machine) throw notFound();
      return { keys: (await listAgentKeys(deps.store, me.tenantId, machine.id)).map(publicAgentKey) };
    }, { params: IdParams, response: { 200: z.object({ keys: z.array(AgentKey) }) }, detail: { tags, summary: "A machine's agent keys (metadata only)" } })

    .delete("/api/machines/:id/keys/:key_id", async (ctx) => {
      const me = await authorize(ctx, "agent_keys:write");
      const { id, key_id } = ctx.params;
      const result = await revokeAgentKey(deps.store, me.tenantId, id, key_id);
      if (!result) throw new HttpError(404, "AGENT_KEY_NOT_FOUND", "this machine has no such agent key");
      if (result.newly) {
        await audit(deps.store, { tenantId: me.tenantId, type: "agent_key.revoked", actor: actorOf(me), target: { type: "machine", id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { agent_key_id: key_id, key_prefix: result.row.prefix } });
      }
      ctx.set.status = 204;
    }, { params: KeyParams, detail: { tags, summary: "Revoke one agent key of a machine" } });

async function setDisabled(deps: AppDeps, ctx: Parameters<typeof authorize>[0] & { params: { id: string } }, disabled: boolean) {
  const me = await authorize(ctx, "machines:write");
  const result = await setMachineDisabled(deps.store, me.tenantId, ctx.params.id, disabled);
  if (!result) throw notFound();
  if (result.changed) {
    await audit(deps.store, {
      tenantId: me.tenantId, type: disabled ? "machine.disabled" : "machine.enabled", actor: actorOf(me), target: { type: "machine", id: result.machine.id },
      ip: ctx.ip, correlationId: ctx.correlationId, details: { hostname: result.machine.hostname },
    });
  }
  // Nobody reaches a disabled machine: its sessions end now (the agent's socket goes with the sweep).
  if (disabled) await endSessionsOnLostAccess(deps, me.tenantId, { machineIds: [result.machine.id] });
  return withLive(deps, me, result.machine);
}

/** One machine as the API shows it, with its live sessions. */
async function withLive(deps: AppDeps, viewer: Viewer, m: MachineRow) {
  return publicMachine(m, await liveSessionsOf(deps.store, viewer, [m.id]));
}

async function decide(deps: AppDeps, ctx: Parameters<typeof authorize>[0] & { params: { id: string } }, decision: "approve" | "reject") {
  const me = await authorize(ctx, "machines:write");
  const result = await decidePending(deps.store, me.tenantId, ctx.params.id, decision, me.userId);
  if (!result.ok) {
    if (result.reason === "machine_not_found") throw notFound();
    throw new HttpError(409, "NO_PENDING_ENROLLMENT", "this machine has no enrollment waiting for approval");
  }
  await audit(deps.store, {
    tenantId: me.tenantId, type: decision === "approve" ? "machine.approved" : "machine.rejected", actor: actorOf(me), target: { type: "machine", id: result.machine.id },
    ip: ctx.ip, correlationId: ctx.correlationId, details: { request_id: result.request.id, claimant_hostname: result.request.hostname, claimant_ip: result.request.ip, revoked_keys: result.revokedKeys },
  });
  return withLive(deps, me, result.machine);
}

/**
 * What follows a removal, once it is committed: each machine audited, and each grant it took back
 * (as `grant.revoked`, reason `machine_removed`); the machines' live sessions ended; and the end
 * users who lost them out of their sessions' rooms, as when a grant is taken back by hand.
 */
async function afterRemoval(deps: AppDeps, ctx: RequestContext, me: Principal, removed: RemovedMachine[], bulk: boolean): Promise<void> {
  const by = { tenantId: me.tenantId, actor: actorOf(me), ip: ctx.ip, correlationId: ctx.correlationId };
  // Handed in together, so that a bulk removal's rows are group-committed (src/audit/audit.ts).
  await Promise.all(removed.flatMap((r) => [
    audit(deps.store, { ...by, type: "machine.removed", target: { type: "machine", id: r.id }, details: { hostname: r.hostname, machine_uid: r.machine_uid, grants_revoked: r.grantees.length, ...(bulk ? { bulk } : {}) } }),
    ...r.grantees.map((user) => audit(deps.store, { ...by, type: "grant.revoked", target: { type: "user", id: user }, details: { machine_id: r.id, reason: "machine_removed" } })),
  ]));
  await endSessionsOnLostAccess(deps, me.tenantId, { machineIds: removed.map((r) => r.id) });
  for (const r of removed) for (const user of r.grantees) await leaveSessionRoomsOnLostGrant(deps, me.tenantId, user, r.id);
}
