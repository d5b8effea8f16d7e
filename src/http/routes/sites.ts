import { Elysia } from "elysia";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { fingerprintLabel } from "../../auth/secrets.ts";
import { rotateEnrollmentKey } from "../../enrollment/enrollment-keys.ts";
import { installCommand } from "../../install/install-script.ts";
import { createSite, getSite, listSites, publicSite, SiteCodeTakenError, siteKeyMeta } from "../../enrollment/sites.ts";
import { Uuid } from "../../protocol/accounts.ts";
import { CreateSiteRequest, EnrollmentKeyMeta, RotatedEnrollmentKey, Site } from "../../protocol/sites.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { publicUrl } from "../public-url.ts";

const tags = ["sites"];
const IdParams = z.object({ id: Uuid });


/** Sites of the caller's tenant and their enrollment keys (A5, M1). */
export const siteRoutes = (deps: AppDeps) =>
  new Elysia({ name: "site-routes" })
    .use(requestContext(deps))
    .get("/api/sites", async (ctx) => {
      const me = await authorize(ctx, "sites:read");
      const url = publicUrl(deps.config, ctx.request);
      return { sites: (await listSites(deps.store, me.tenantId)).map((s) => publicSite(s, url)) };
    }, { response: { 200: z.object({ sites: z.array(Site) }) }, detail: { tags, summary: "List sites" } })

    .post("/api/sites", async (ctx) => {
      const me = await authorize(ctx, "sites:write");
      const { body } = ctx;
      let site;
      try {
        site = await createSite(deps.store, me.tenantId, { siteCode: body.site_code, displayName: body.display_name, company: body.company });
      } catch (err) {
        if (err instanceof SiteCodeTakenError) throw new HttpError(409, "SITE_CODE_TAKEN", "a site with that code exists");
        throw err;
      }
      await audit(deps.store, { tenantId: me.tenantId, type: "site.created", actor: actorOf(me), target: { type: "site", id: site.id }, ip: ctx.ip, correlationId: ctx.correlationId, details: { site: site.site_code, display_name: site.display_name, company: site.company } });
      ctx.set.status = 201;
      return publicSite(site, publicUrl(deps.config, ctx.request));
    }, { body: CreateSiteRequest, response: { 201: Site }, detail: { tags, summary: "Create a site (its enrollment key comes from the first rotation)" } })

    .get("/api/sites/:id", async (ctx) => {
      const me = await authorize(ctx, "sites:read");
      const site = await getSite(deps.store, me.tenantId, ctx.params.id);
      if (!site) throw new HttpError(404, "SITE_NOT_FOUND", "no such site");
      return publicSite(site, publicUrl(deps.config, ctx.request));
    }, { params: IdParams, response: { 200: Site }, detail: { tags, summary: "One site, with its enrollment key's metadata and install command" } })

    .post("/api/sites/:id/enrollment-key/rotate", async (ctx) => {
      const me = await authorize(ctx, "sites:write");
      const rotated = await rotateEnrollmentKey(deps.store, me.tenantId, ctx.params.id);
      if (!rotated) throw new HttpError(404, "SITE_NOT_FOUND", "no such site");
      await audit(deps.store, {
        tenantId: me.tenantId, type: "enrollment_key.rotated", actor: actorOf(me), target: { type: "site", id: rotated.siteId }, ip: ctx.ip, correlationId: ctx.correlationId,
        details: { site_id: rotated.siteId, site: rotated.siteCode, key_version: rotated.version, key_fingerprint: rotated.fingerprint },
      });
      ctx.set.status = 201;
      return {
        site_id: rotated.siteId, key: rotated.key, version: rotated.version, fingerprint: rotated.fingerprint, fingerprint_label: fingerprintLabel(rotated.version, rotated.fingerprint),
        install_command: installCommand(publicUrl(deps.config, ctx.request), rotated.siteCode, rotated.key),
      };
    }, { params: IdParams, response: { 201: RotatedEnrollmentKey }, detail: { tags, summary: "Rotate (or first issue) the site's enrollment key; the key is shown once" } })

    .get("/api/sites/:id/enrollment-key", async (ctx) => {
      const me = await authorize(ctx, "sites:read");
      const site = await getSite(deps.store, me.tenantId, ctx.params.id);
      if (!site) throw new HttpError(404, "SITE_NOT_FOUND", "no such site");
      const key = siteKeyMeta(site);
      if (!key) throw new HttpError(404, "NO_ENROLLMENT_KEY", "the site has no active enrollment key");
      return key;
    }, { params: IdParams, response: { 200: EnrollmentKeyMeta }, detail: { tags, summary: "The active enrollment key's metadata (never the key)" } });
