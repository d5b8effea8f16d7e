import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { Packr } from "msgpackr";
import type { Browser, BrowserContext, Page, WebSocketRoute } from "playwright-core";
import { builtViewer, launchBrowser, screenshot } from "../helpers/browser.ts";
import { E2e, runName } from "../helpers/e2e.ts";
import { isDataFrame } from "../../src/protocol/frames.ts";

/**
 * The machine page and the session page in a real headless chromium, against a real server
 * process and a real managed agent (with a PTY): connect, type in the terminal, upload and
 * download a file, a view-only viewer who cannot type, a command's exit code, ending it.
 */
const ADMIN_PASSWORD = "web session correct horse battery";

describe("web session page", () => {
  let e2e: E2e;
  let machineId = "";
  let sessionId = "";
  let browser: Browser;
  let control: Page;
  let watcherContext: BrowserContext | null = null;
  let watcher: Page;
  const errors: string[] = [];
  const run = runName("webs");
  const work = mkdtempSync(join(tmpdir(), "tether-web-session-"));
  // Over the 1 MiB window: the upload waits on the agent's acks, the download sends acks.
  const payload = new Uint8Array(1536 * 1024 + 77);
  for (let i = 0; i < payload.byteLength; i += 65_536) crypto.getRandomValues(payload.subarray(i, Math.min(payload.byteLength, i + 65_536)));

  const watch = (page: Page, who: string) => {
    page.on("console", (m) => m.type() === "error" && !/status of 401/.test(m.text()) && errors.push(`${who}: ${m.text()}`));
    page.on("pageerror", (e) => errors.push(`${who}: ${e.message}`));
  };
  async function signIn(context: BrowserContext, who: string): Promise<Page> {
    const page = await context.newPage();
    watch(page, who);
    await page.goto(e2e.url + "/");
    await page.getByLabel("Username").fill("admin");
    await page.getByLabel("Password").fill(ADMIN_PASSWORD);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Machines" }).waitFor();
    return page;
  }
  /** The visible terminal's rows, as lines of text. */
  const termLines = (page: Page) =>
    page.locator(".term-pane:not([hidden]) .xterm-rows").evaluate((el) => [...el.children].map((row) => (row.textContent ?? "").replace(/\u00a0/g, " ").trimEnd()));
  async function waitForLine(page: Page, pred: (line: string) => boolean, what: string, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lines = await termLines(page).catch(() => [] as string[]);
      if (lines.some(pred)) return;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; the terminal shows:\n${lines.filter(Boolean).join("\n")}`);
      await page.waitForTimeout(50);
    }
  }
  async function typeInTerminal(page: Page, line: string): Promise<void> {
    await page.locator(".term-pane:not([hidden]) .term-box").click();
    await page.keyboard.type(line);
    await page.keyboard.press("Enter");
  }

  beforeAll(async () => {
    // The agents' public address is another host, over TLS: the page must still reach its
    // viewer socket on its own origin (CSP connect-src 'self', no mixed content).
    e2e = await E2e.create("pglite", {
      adminPassword: ADMIN_PASSWORD,
      env: { TETHER_WEB_DIST: await builtViewer(), TETHER_HEARTBEAT_MS: "1000", TETHER_PUBLIC_URL: "https://tether-agents.invalid" },
    });
    e2e.dirs.push(work);
    await e2e.start();
    const site = await e2e.site(run);
    // /bin/sh, not the login shell of whoever runs the tests: no rc files, a plain prompt.
    const [agent, b] = await Promise.all([e2e.enroll(site, [], { SHELL: "/bin/sh" }), launchBrowser()]);
    machineId = agent.id;
    browser = b;
    control = await signIn(await browser.newContext({ viewport: { width: 1280, height: 800 } }), "control");
  }, 45_000);

  afterAll(async () => {
    await browser?.close();
    await e2e?.cleanup();
  });

  test("the machine page shows the inventory, labels, keys and sessions; connect opens a terminal where `echo hello` prints hello", async () => {
    await control.goto(`${e2e.url}/machines/${machineId}`);
    await control.getByRole("region", { name: "Inventory" }).getByText("Operating system").waitFor();
    await control.getByRole("region", { name: "Agent keys" }).getByRole("table", { name: "Keys" }).waitFor();
    await control.getByText("No sessions on this machine yet.").waitFor();
    expect(await control.getByRole("region", { name: "Labels" }).textContent()).toContain("Tags");
    await screenshot(control, "machine");

    await control.getByRole("button", { name: "Connect (control)" }).click();
    await control.waitForURL(/\/sessions\/[0-9a-f-]{36}\?access=control$/);
    sessionId = new URL(control.url()).pathname.split("/").at(-1)!;
    await control.getByRole("status", { name: "Session state" }).filter({ hasText: "active" }).waitFor();
    // The shell's prompt first: what is typed before it would be echoed ahead of it.
    await waitForLine(control, (l) => l.trim().length > 0, "the prompt");
    await typeInTerminal(control, "echo hello");
    await waitForLine(control, (l) => l === "hello", "hello on a line of its own");
    await screenshot(control, "session");
  }, 30_000);

  test("the terminal follows the window: a smaller window resizes the PTY (stty size)", async () => {
    const rowsBefore = (await termLines(control)).length;
    await control.setViewportSize({ width: 1000, height: 600 });
    await control.waitForFunction((n) => (document.querySelector(".term-pane:not([hidden]) .xterm-rows")?.children.length ?? n) !== n, rowsBefore);
    const rows = (await termLines(control)).length;
    // term.resize goes out shortly after the fit: ask until the shell sees the new size.
    const deadline = Date.now() + 10_000;
    for (let seen = false; !seen; ) {
      await typeInTerminal(control, "stty size");
      try {
        await waitForLine(control, (l) => new RegExp(`^${rows} \\d+$`).test(l), `stty size ${rows} …`, 1_000);
        seen = true;
      } catch (e) {
        if (Date.now() > deadline) throw e;
      }
    }
    await control.setViewportSize({ width: 1280, height: 800 });
  }, 20_000);

  test("a paste over 64 KiB reaches the shell whole (several frames, none too large), and the page stays connected", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tether-web-paste-"));
    e2e.dirs.push(dir);
    const pasted = join(dir, "pasted.txt");
    await typeInTerminal(control, `cat > ${pasted}`);
    // Multibyte characters too: no piece may end inside one.
    const text = "0123456789abcdefghijklmnopqrstuvwxyz-é€😀\n".repeat(2000);
    expect(Buffer.byteLength(text)).toBeGreaterThan(64 * 1024);
    await control.locator(".term-pane:not([hidden]) .xterm-helper-textarea").evaluate((el, t) => {
      const clipboardData = new DataTransfer();
      clipboardData.setData("text/plain", t);
      el.dispatchEvent(new ClipboardEvent("paste", { clipboardData, bubbles: true, cancelable: true }));
    }, text);
    const deadline = Date.now() + 15_000;
    while (!existsSync(pasted) || readFileSync(pasted).byteLength < Buffer.byteLength(text)) {
      if (Date.now() > deadline) throw new Error(`the paste did not arrive whole: ${existsSync(pasted) ? readFileSync(pasted).byteLength : 0} bytes`);
      await control.waitForTimeout(100);
    }
    await control.keyboard.press("Control+d");
    expect(readFileSync(pasted, "utf8")).toBe(text);
    expect(await control.getByText(/Disconnected from the session/).count()).toBe(0);
  }, 30_000);

  test("a file uploaded from the browser reaches the machine; downloaded again it is byte for byte the same", async () => {
    await control.getByRole("tab", { name: "Files" }).click();
    const files = control.getByRole("region", { name: "Files" });
    await files.getByRole("table", { name: "Directory" }).or(files.getByText("This directory is empty.")).waitFor();
    await files.getByLabel("Path").fill(work);
    await files.getByLabel("Path").press("Enter");
    await files.getByText("This directory is empty.").waitFor();
    await files.getByLabel("Upload a file").setInputFiles({ name: "payload.bin", mimeType: "application/octet-stream", buffer: Buffer.from(payload) });
    await files.locator('.transfers li[data-state="done"]').filter({ hasText: "payload.bin" }).waitFor({ timeout: 20_000 });
    await files.locator('tr[data-name="payload.bin"]').waitFor();
    expect(Buffer.from(readFileSync(join(work, "payload.bin"))).equals(Buffer.from(payload))).toBe(true);

    const [download] = await Promise.all([control.waitForEvent("download", { timeout: 20_000 }), files.getByRole("button", { name: "Download payload.bin" }).click()]);
    expect(download.suggestedFilename()).toBe("payload.bin");
    const got = readFileSync(await download.path());
    expect(got.byteLength).toBe(payload.byteLength);
    expect(Buffer.from(got).equals(Buffer.from(payload))).toBe(true);

    // Moving on while an upload runs: its end does not bring the browser back to its folder.
    await files.getByLabel("Upload a file").setInputFiles({ name: "second.bin", mimeType: "application/octet-stream", buffer: Buffer.from(payload) });
    await files.getByRole("button", { name: "Up one directory" }).click();
    await files.locator('.transfers li[data-state="done"]').filter({ hasText: "second.bin" }).waitFor({ timeout: 20_000 });
    await control.waitForTimeout(500);
    expect(await files.getByLabel("Path").inputValue()).toBe(dirname(work));
    await files.locator(`tr[data-name="${basename(work)}"]`).waitFor();
    expect(readFileSync(join(work, "second.bin")).byteLength).toBe(payload.byteLength);
    await control.getByRole("tab", { name: "Terminal" }).click();
  }, 40_000);

  test("a slow listing answered after a newer one does not replace it", async () => {
    const slow = join(work, "slow-a");
    const fast = join(work, "fast-b");
    mkdirSync(slow);
    mkdirSync(fast);
    writeFileSync(join(slow, "a-file"), "a");
    writeFileSync(join(fast, "b-file"), "b");
    const page = await control.context().newPage();
    watch(page, "files");
    const unpacker = new Packr({ useRecords: false });
    let held = 0;
    await page.routeWebSocket(/\/ws\/viewer/, (ws) => {
      const server = ws.connectToServer();
      ws.onMessage((m) => server.send(m));
      server.onMessage((m) => {
        if (typeof m !== "string" && !isDataFrame(m)) {
          const msg = unpacker.unpack(m) as { t?: string; path?: string };
          // The slow directory's listing arrives 2 s late, after the one asked for next.
          if (msg.t === "files.listing" && msg.path === slow) {
            held++;
            return void setTimeout(() => ws.send(m), 2_000);
          }
        }
        ws.send(m);
      });
    });
    try {
      await page.goto(`${e2e.url}/sessions/${sessionId}`);
      await page.getByRole("tab", { name: "Files" }).click();
      const files = page.getByRole("region", { name: "Files" });
      await files.getByRole("table", { name: "Directory" }).or(files.getByText("This directory is empty.")).waitFor();
      await files.getByLabel("Path").fill(slow);
      await files.getByLabel("Path").press("Enter");
      await files.getByLabel("Path").fill(fast);
      await files.getByLabel("Path").press("Enter");
      await files.locator('tr[data-name="b-file"]').waitFor();
      await page.waitForTimeout(2_500);
      expect(held).toBe(1);
      expect(await files.locator('tr[data-name="a-file"]').count()).toBe(0);
      expect(await files.locator('tr[data-name="b-file"]').count()).toBe(1);
      expect(await files.getByLabel("Path").inputValue()).toBe(fast);
    } finally {
      await page.close();
    }
  }, 30_000);

  test("a view-only viewer sees the terminal but cannot type in it, nor run, upload, chat or end", async () => {
    watcherContext = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    watcher = await signIn(watcherContext, "watcher");
    await watcher.goto(`${e2e.url}/sessions/${sessionId}?access=view`);
    await watcher.getByText("view only", { exact: true }).first().waitFor();
    await watcher.locator(".term-tab").first().waitFor();
    for (const name of ["Command", "Chat message"]) expect(await watcher.getByLabel(name, { exact: true }).isDisabled()).toBe(true);
    expect(await watcher.getByRole("button", { name: "End session" }).isDisabled()).toBe(true);
    expect(await watcher.getByRole("button", { name: "+ New terminal" }).isDisabled()).toBe(true);
    expect(await watcher.getByLabel("Upload a file").isDisabled()).toBe(true);
    // Both viewers are listed, each with their access.
    await control.locator(".people li").nth(1).waitFor();
    expect(await control.locator(".people li .badge").allTextContents()).toEqual(expect.arrayContaining(["control", "view"]));

    const refused = join(work, `viewer-${run}`);
    await typeInTerminal(watcher, `touch ${refused}`);
    await typeInTerminal(control, "echo marker-$((20+22))");
    await waitForLine(control, (l) => l === "marker-42", "marker-42 for the controller");
    await waitForLine(watcher, (l) => l === "marker-42", "marker-42 for the watcher");
    expect(existsSync(refused)).toBe(false);
    expect((await termLines(control)).join("\n")).not.toContain(`viewer-${run}`); // not even echoed by the shell
    await screenshot(watcher, "session-view-only");
  }, 30_000);

  test("a command runs with its output streamed and its exit code shown", async () => {
    await control.getByRole("tab", { name: "Commands" }).click();
    await control.getByLabel("Command", { exact: true }).fill(`sh -c "echo to-stdout; echo to-stderr >&2; exit 3"`);
    await control.getByRole("button", { name: "Run" }).click();
    const runBox = control.locator(".run").first();
    await runBox.getByText("exit code 3").waitFor({ timeout: 15_000 });
    // Over the protocol's limits: refused on the page, not sent (the server would close the socket).
    await control.getByLabel("Command", { exact: true }).fill(`echo ${"a ".repeat(300)}`);
    await control.getByRole("button", { name: "Run" }).click();
    await control.getByRole("region", { name: "Commands" }).getByRole("alert").filter({ hasText: "too many arguments" }).waitFor();
    expect(await control.locator(".run").count()).toBe(1);
    expect(await control.getByText(/Disconnected from the session/).count()).toBe(0);
    expect(await runBox.locator(".output").textContent()).toContain("to-stdout");
    expect(await runBox.locator(".output .stderr").textContent()).toContain("to-stderr");
    // The watcher sees the command run too, but has no cancel.
    await watcher.getByRole("tab", { name: "Commands" }).click();
    await screenshot(control, "session-command");
  }, 20_000);

  test("the server killed and started again: the page reconnects by itself and the session works again", async () => {
    await control.getByRole("tab", { name: "Terminal" }).click();
    await e2e.kill("SIGKILL");
    await control.getByText(/Disconnected from the session/).waitFor({ timeout: 10_000 });
    await e2e.start();
    // Nobody clicks anything: the page mints a new token and rejoins once the server answers.
    await control.getByRole("status", { name: "Session state" }).filter({ hasText: /^active/ }).waitFor({ timeout: 30_000 });
    await control.locator(".term-pane:not([hidden]) .xterm-rows").waitFor({ timeout: 15_000 });
    await waitForLine(control, (l) => l.trim().length > 0, "a prompt after the restart");
    await typeInTerminal(control, "echo back-again");
    await waitForLine(control, (l) => l === "back-again", "output after the restart");
    // The browser logged the refused connections while the server was down; nothing else.
    const unexpected = errors.filter((e) => !/ERR_CONNECTION_REFUSED|WebSocket|status of 50[23]|Failed to fetch/.test(e));
    errors.length = 0;
    errors.push(...unexpected);
  }, 60_000);

  test("a server that accepts the viewer socket and closes it at once is retried with a growing backoff, not every half second", async () => {
    const page = await watcherContext!.newPage();
    const attempts: number[] = [];
    await page.routeWebSocket(/\/ws\/viewer/, (ws) => {
      attempts.push(Date.now());
      // Just after it opens (closed at once, the page would see a failed connect instead).
      setTimeout(() => ws.close({ code: 1011, reason: "busy" }), 20);
    });
    try {
      await page.goto(`${e2e.url}/sessions/${sessionId}?access=view`);
      await page.getByText(/Disconnected from the session/).waitFor({ timeout: 10_000 });
      await page.waitForTimeout(3_000 - (Date.now() - attempts[0]!));
      // Backoff from 0.5 s doubling (each wait jittered between half and all of it): at most 4
      // tries in the first 3 s. Reset on every open, it was one every 0.25-0.5 s.
      expect(attempts.length).toBeLessThanOrEqual(4);
    } finally {
      await page.close();
    }
  }, 20_000);

  test("the chat keeps scrolling to the newest message once it holds its 500", async () => {
    const page = await watcherContext!.newPage();
    const packr = new Packr({ useRecords: false });
    const chat = (n: number, text = `message ${n}`) => packr.pack({ t: "chat", id: `m${String(n).padStart(6, "0")}`, from: "tester", role: "technician", text, at: Date.now() });
    let server: WebSocketRoute | null = null;
    // A scripted server: joined, then a full chat.
    await page.routeWebSocket(/\/ws\/viewer/, (ws) => {
      server = ws;
      ws.send(packr.pack({ t: "joined", session: sessionId, viewer_id: "v", access: "view", state: "active", viewers: [], channels: [] }));
      for (let n = 1; n <= 500; n++) ws.send(chat(n));
    });
    try {
      await page.goto(`${e2e.url}/sessions/${sessionId}?access=view`);
      const list = page.locator(".chat .messages");
      await list.getByText("message 500", { exact: true }).waitFor();
      const atBottom = () => list.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight < 4);
      await page.waitForFunction(() => { const el = document.querySelector(".chat .messages")!; return el.scrollHeight - el.scrollTop - el.clientHeight < 4; });
      // The 501st (taller than the one trimmed): the count stays 500, the list must still follow.
      server!.send(chat(501, "a longer message ".repeat(40)));
      await list.locator("li").last().getByText(/a longer message/).waitFor();
      await page.waitForTimeout(100);
      expect(await list.locator("li").count()).toBe(500);
      expect(await atBottom()).toBe(true);
    } finally {
      await page.close();
    }
  }, 20_000);

  test("chat reaches every viewer; ending the session tells both pages", async () => {
    await control.getByLabel("Chat message").fill("hello from the console");
    await control.getByRole("button", { name: "Send" }).click();
    // The watcher may still be rejoining after the restart: it is sent the chat so far when it does.
    await watcher.locator(".chat .messages").getByText("hello from the console").waitFor({ timeout: 15_000 });
    await watcher.reload();
    await watcher.locator(".chat .messages").getByText("hello from the console").waitFor({ timeout: 10_000 });
    await control.getByRole("button", { name: "End session" }).click();
    await control.getByText("The session has ended").waitFor({ timeout: 10_000 });
    await watcher.getByText("The session has ended").waitFor({ timeout: 10_000 });
    await e2e.waitSession(sessionId, (s) => s.state === "ended" && s.end_reason === "technician", 5_000, "ended by the technician");
    expect(errors).toEqual([]);
  }, 40_000);
});
