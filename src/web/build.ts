import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { resolve } from "node:path";
import { gzipSync } from "node:zlib";

/**
 * Builds the web viewer into dist/web with Bun's bundler: content-hashed, code-split (the
 * terminal and the recording player load only on the pages that use them), minified, and an
 * index.html that names the entry. Needs nothing beyond the packages npm installed.
 *   bun src/web/build.ts        (npm run build:web; npm start runs it first)
 */
const ROOT = resolve(import.meta.dir, "..", "..");
export const WEB_DIST = resolve(ROOT, "dist", "web");

export interface WebBuild {
  entry: string;
  css: string[];
  files: Array<{ name: string; bytes: number; gzip: number }>;
}

export async function buildWeb(outdir = WEB_DIST): Promise<WebBuild> {
  await rm(outdir, { recursive: true, force: true });
  await mkdir(resolve(outdir, "assets"), { recursive: true });
  const result = await Bun.build({
    entrypoints: [resolve(import.meta.dir, "main.tsx")],
    outdir: resolve(outdir, "assets"),
    target: "browser",
    splitting: true,
    minify: true,
    sourcemap: "none",
    naming: { entry: "[name]-[hash].[ext]", chunk: "chunk-[hash].[ext]", asset: "[name]-[hash].[ext]" },
    define: { "process.env.NODE_ENV": '"production"' },
  });
  if (!result.success) throw new AggregateError(result.logs, "web build failed");
  const entry = result.outputs.find((o) => o.kind === "entry-point")!;
  const entryName = entry.path.split("/").at(-1)!;
  const css = result.outputs.filter((o) => o.path.endsWith(".css")).map((o) => o.path.split("/").at(-1)!);
  const html = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tether</title>
${css.map((c) => `<link rel="stylesheet" href="/assets/${c}">`).join("\n")}
</head>
<body>
<div id="app"></div>
<script type="module" src="/assets/${entryName}"></script>
</body>
</html>
`;
  await Bun.write(resolve(outdir, "index.html"), html);
  const files = [];
  for (const name of await readdir(resolve(outdir, "assets"))) {
    const bytes = await Bun.file(resolve(outdir, "assets", name)).bytes();
    files.push({ name, bytes: (await stat(resolve(outdir, "assets", name))).size, gzip: gzipSync(bytes).byteLength });
  }
  return { entry: entryName, css, files };
}

if (import.meta.main) {
  const started = performance.now();
  const build = await buildWeb();
  const initial = build.files.filter((f) => f.name === build.entry || build.css.includes(f.name)).reduce((a, f) => a + f.gzip, 0);
  console.log(`web viewer built in ${Math.round(performance.now() - started)} ms: ${build.files.length} files, initial ${(initial / 1024).toFixed(1)} KB gzip → dist/web`);
}
