import { openapi } from "@elysiajs/openapi";
import { z } from "zod";

/** The OpenAPI 3 document at /api/openapi.json, generated from the routes' zod schemas, browsable at /api/docs. */
export const apiDocs = () =>
  openapi({
    path: "/api/docs",
    specPath: "/api/openapi.json",
    mapJsonSchema: { zod: z.toJSONSchema },
    exclude: { paths: ["/healthz", "/readyz", "/metrics"] },
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
  });
