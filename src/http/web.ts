import { Elysia } from "elysia";
import { resolve } from "node:path";
import { HttpError } from "./errors.ts";

/**
 * Serves the built web viewer (src/web, built into dist/web): content-hashed assets cached for
 * a year, and the one HTML page for every other browser path, with a Content-Security-Policy
 * that allows no inline script, no other origin and no framing.
 */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  // The recording player's terminal emulator is WebAssembly: compiling it needs this, which
  // allows no eval of JavaScript and no inline script.
  "script-src 'self' 'wasm-unsafe-eval'",
  // Inline styles (not scripts): xterm.js and the recording player write <style> elements and
  // style attributes for layout and 24-bit colours.
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data: blob:",
  "font-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join("; ");

const PAGE_HEADERS = {
  "content-type": "text/html; charset=utf-8",
  "cache-control": "no-cache",
  "content-security-policy": CONTENT_SECURITY_POLICY,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
};
const ASSET = /^[A-Za-z0-9._-]+\.(js|css|woff2?|svg|png)$/;

export const webViewer = (dist: string) =>
  new Elysia({ name: "web-viewer" })
    .get("/assets/:name", async ({ params }) => {
      if (!ASSET.test(params.name)) throw new HttpError(404, "NOT_FOUND", "no such asset");
      const file = Bun.file(resolve(dist, "assets", params.name));
      if (!(await file.exists())) throw new HttpError(404, "NOT_FOUND", "no such asset");
      return new Response(file, { headers: { "cache-control": "public, max-age=31536000, immutable", "x-content-type-options": "nosniff" } });
    }, { detail: { hide: true } })
    .get("/*", async ({ request }) => {
      const path = new URL(request.url).pathname;
      if (path.startsWith("/api/") || path.startsWith("/ws/")) throw new HttpError(404, "NOT_FOUND", `no route for GET ${path}`);
      const page = Bun.file(resolve(dist, "index.html"));
      if (!(await page.exists())) {
        return new Response("The web viewer is not built: run `npm run build:web` (npm start does it).\n", { status: 503, headers: { "content-type": "text/plain; charset=utf-8" } });
      }
      return new Response(page, { headers: PAGE_HEADERS });
    }, { detail: { hide: true } });
