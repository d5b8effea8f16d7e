import { mkdir } from "node:fs/promises";
import { resolve } from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { buildWeb } from "../../src/web/build.ts";

/**
 * Debian's chromium, headless, driven by playwright-core (no browser download), and the web
 * viewer built once per test process into a temporary directory.
 */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const ARTIFACTS = resolve(import.meta.dir, "..", "..", "test-artifacts");

let built: Promise<string> | null = null;
export function builtViewer(): Promise<string> {
  return (built ??= (async () => {
    const dir = `/tmp/tether-web-test-${process.pid}`;
    await buildWeb(dir);
    return dir;
  })());
}

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    // As root in CI: no sandbox. No background networking: this machine's network is closed.
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

export async function screenshot(page: Page, name: string): Promise<void> {
  await mkdir(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: resolve(ARTIFACTS, `${name}.png`), fullPage: true });
}
