/**
 * What clicking a link (OSC 8) in a terminal does: whatever runs on the machine prints those,
 * so only http and https links open, after asking, in a new tab that cannot reach this page.
 */
export const terminalLinks = {
  activate(_event: MouseEvent, uri: string): void {
    const url = httpUrl(uri);
    if (!url || !confirm(`Open this link from the terminal?\n\n${url}`)) return;
    window.open(url, "_blank", "noopener,noreferrer");
  },
  // The check above is what matters; xterm is not asked to offer other schemes at all.
  allowNonHttpProtocols: false,
};

/** The link as an absolute http(s) URL, or null for any other scheme (javascript:, data:, file:…). */
export function httpUrl(uri: string): string | null {
  try {
    const u = new URL(uri);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}
