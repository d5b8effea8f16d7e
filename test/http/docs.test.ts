import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { api } from "../../src/http/api.ts";
import type { AppDeps } from "../../src/http/deps.ts";
import { startTestApp, type TestApp } from "../helpers/app.ts";
import { FLAVORS } from "../helpers/stores.ts";

// Each app starts a real server on a fresh database; the machine is small and shared.
setDefaultTimeout(60_000);

/** A stand-in for AppDeps, enough to build the route tree (nothing runs a request on it). */
const stub: any = new Proxy(function () {}, { get: (_t, p) => (p === "then" ? undefined : stub), apply: () => stub });

const toOpenApiPath = (path: string) => path.replace(/:([A-Za-z0-9_]+)/g, "{$1}");

for (const flavor of FLAVORS) {
  describe(`API docs (${flavor})`, () => {
    let app: TestApp;
    let spec: any;
    beforeAll(async () => {
      app = await startTestApp(flavor);
      const r = await fetch(`${app.url}/api/openapi.json`);
      expect(r.status).toBe(200);
      spec = await r.json();
    }, 60_000);
    afterAll(async () => app?.close());

    const bodyProps = (path: string, method: string) =>
      Object.keys(spec.paths[path]?.[method]?.requestBody?.content?.["application/json"]?.schema?.properties ?? {}).sort();
    const queryParams = (path: string, method: string) =>
      (spec.paths[path]?.[method]?.parameters ?? []).filter((p: any) => p.in === "query").map((p: any) => p.name).sort();

    test("/api/openapi.json is an OpenAPI 3 document with the request schemas", () => {
      expect(spec.openapi).toMatch(/^3\.\d+\.\d+$/);
      expect(spec.info.title).toBe("Tether API");
      expect(bodyProps("/api/auth/login", "post")).toEqual(["password", "recovery_code", "totp_code", "username"]);
      expect(bodyProps("/api/users", "post")).toEqual(["display_name", "password", "role", "username"]);
      expect(queryParams("/api/users", "get")).toEqual(["role"]);
      expect(bodyProps("/api/tokens", "post")).toEqual(["expires_at", "name", "scopes"]);
      expect(spec.paths["/api/tokens"].post.requestBody.content["application/json"].schema.properties.scopes.items.enum).toContain("users:read");
      expect(spec.paths["/api/tokens"].get).toBeDefined();
      expect(spec.paths["/api/tokens/{id}"].delete.parameters.map((p: any) => p.name)).toEqual(["id"]);
      expect(spec.paths["/api/users/{id}/tokens/{token_id}"].delete).toBeDefined();
      expect(queryParams("/api/audit", "get")).toEqual(["actor", "cursor", "from", "limit", "outcome", "target", "to", "type"]);
      expect(bodyProps("/api/settings", "patch")).toEqual(["require_totp_roles"]);
      expect(spec.components.securitySchemes.bearer).toMatchObject({ type: "http", scheme: "bearer" });
      // Not the docs' own routes, nor operations endpoints.
      expect(Object.keys(spec.paths).filter((p) => !p.startsWith("/api/") || p.startsWith("/api/docs"))).toEqual([]);
    });

    test("every /api route is in the document, with a schema for each body, query and path parameter it validates", () => {
      const routes = api(stub as AppDeps).routes.filter((r: any) =>
        r.path.startsWith("/api/") && !r.hooks?.detail?.hide && /^(GET|POST|PUT|PATCH|DELETE)$/.test(r.method));
      expect(routes.length).toBeGreaterThan(15);
      const missing: string[] = [];
      for (const r of routes as any[]) {
        const op = spec.paths[toOpenApiPath(r.path)]?.[r.method.toLowerCase()];
        const name = `${r.method} ${r.path}`;
        if (!op) {
          missing.push(name);
          continue;
        }
        if (r.hooks?.body && !op.requestBody) missing.push(`${name} body`);
        if (r.hooks?.query && !op.parameters?.some((p: any) => p.in === "query")) missing.push(`${name} query`);
        for (const param of r.path.match(/:([A-Za-z0-9_]+)/g) ?? []) {
          if (!op.parameters?.some((p: any) => p.in === "path" && p.name === param.slice(1))) missing.push(`${name} ${param}`);
        }
      }
      expect(missing).toEqual([]);
    });

    test("/api/docs is browsable offline: its page loads scripts and styles from this server only", async () => {
      const page = await fetch(`${app.url}/api/docs`);
      expect(page.status).toBe(200);
      expect(page.headers.get("content-type")).toContain("text/html");
      const html = await page.text();
      const scripts = [...html.matchAll(/<script[^>]*\ssrc="([^"]+)"/g)].map((m) => m[1]!);
      const styles = [...html.matchAll(/<link[^>]*\shref="([^"]+)"/g)].map((m) => m[1]!);
      expect(scripts.length).toBeGreaterThan(0);
      for (const url of [...scripts, ...styles]) {
        expect(url).toStartWith("/");
        expect(url).not.toStartWith("//");
      }
      expect(html).not.toMatch(/\b(src|href)=["']?(https?:)?\/\//);
      // The spec URL is absolute on this server; the online validator is off.
      expect(html).toContain(`"url":"/api/openapi.json"`);
      expect(html).toContain(`"validatorUrl":null`);

      for (const src of scripts) {
        const r = await fetch(app.url + src);
        expect(r.status).toBe(200);
        expect(r.headers.get("content-type")).toContain("javascript");
        const js = await r.text();
        expect(js.length).toBeGreaterThan(100_000);
        expect(js).toContain("SwaggerUIBundle");
      }
      for (const href of styles) {
        const r = await fetch(app.url + href);
        expect(r.status).toBe(200);
        expect(r.headers.get("content-type")).toContain("text/css");
      }
      expect((await fetch(`${app.url}/api/docs/assets/..%2Fpackage.json`)).status).toBe(404);
      expect((await fetch(`${app.url}/api/docs/assets/swagger-ui-bundle.js.map`)).status).toBe(404);
    });
  });
}
