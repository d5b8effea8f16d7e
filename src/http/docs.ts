import { openapi } from "@elysiajs/openapi";
import { Elysia } from "elysia";
import { dirname, join } from "node:path";
import { z } from "zod";

/**
 * The OpenAPI 3 document at /api/openapi.json, generated from the routes' zod schemas, and a
 * browsable page at /api/docs. The page is Swagger UI served from our own origin (the
 * swagger-ui-dist package), not from a CDN: a self-hosted server may have no way out, and
 * its docs page must not depend on one. Swagger UI's online spec validator is switched off
 * for the same reason (it would send the document to a third party).
 */
export const DOCS_ASSETS = "/api/docs/assets";

const uiDir = dirname(Bun.resolveSync("swagger-ui-dist/package.json", import.meta.dir));
const ASSETS: Record<string, { file: string; type: string }> = {
  "swagger-ui-bundle.js": { file: "swagger-ui-bundle.js", type: "text/javascript; charset=utf-8" },
  "swagger-ui.css": { file: "swagger-ui.css", type: "text/css; charset=utf-8" },
  "favicon-32x32.png": { file: "favicon-32x32.png", type: "image/png" },
};

const docsAssets = () =>
  new Elysia({ name: "api-docs-assets" }).get(`${DOCS_ASSETS}/:file`, ({ params, set }) => {
    const asset = ASSETS[params.file];
    if (!asset) {
      set.status = 404;
      return new Response(null, { status: 404 });
    }
    return new Response(Bun.file(join(uiDir, asset.file)), {
      headers: { "content-type": asset.type, "cache-control": "public, max-age=86400", "x-content-type-options": "nosniff" },
    });
  }, { detail: { hide: true } });

export const apiDocs = () =>
  new Elysia({ name: "api-docs" })
    .use(docsAssets())
    .use(openapi({
      path: "/api/docs",
      specPath: "/api/openapi.json",
      provider: "swagger-ui",
      swagger: {
        // Absolute: the plugin's default is relative to the page, which resolves under /api/api/.
        url: "/api/openapi.json",
        cdn: `${DOCS_ASSETS}/swagger-ui-bundle.js`,
        theme: `${DOCS_ASSETS}/swagger-ui.css`,
        validatorUrl: null,
        deepLinking: true,
        persistAuthorization: false,
      } as Record<string, unknown>,
      mapJsonSchema: { zod: z.toJSONSchema },
      // WebSockets are documented in docs/PROTOCOL.md, not here.
      // staticFile: false, or the plugin drops every path with a dot (/api/agent/install.sh).
      exclude: { paths: ["/healthz", "/readyz", "/metrics", /^\/ws\//], staticFile: false },
      documentation: {
        info: { title: "Tether API", version: "1", description: "The admin and technician API of a Tether server." },
        components: {
          securitySchemes: {
            bearer: { type: "http", scheme: "bearer", description: "A login session token (tss_…) or an API token (tpat_…)" },
            cookie: { type: "apiKey", in: "cookie", name: "tether_session" },
          },
        },
        security: [{ bearer: [] }, { cookie: [] }],
      },
    }));
