import { stat } from "node:fs/promises";

/**
 * The agent executable this server hands out (`npm run build:agent` → dist/tether-agent), built
 * for the server's own platform. Its SHA-256 is what installers and updating agents check; it is
 * computed once per build of the file (keyed on size and mtime), not per request.
 */
export interface AgentBinaryInfo {
  path: string;
  sha256: string;
  sizeBytes: number;
  /** `linux-x64`, `linux-arm64`, … as `uname` on the target maps to it in install.sh. */
  platform: string;
}

export const PLATFORM = `${process.platform}-${process.arch}`;

export class AgentBinary {
  private cached: { key: string; info: AgentBinaryInfo } | null = null;
  private hashing: Promise<AgentBinaryInfo> | null = null;

  constructor(readonly path: string) {}

  /** The binary's facts, or null when it has not been built on this server. */
  async info(): Promise<AgentBinaryInfo | null> {
    let st;
    try {
      st = await stat(this.path);
    } catch {
      return null;
    }
    if (!st.isFile()) return null;
    const key = `${st.size}:${st.mtimeMs}`;
    if (this.cached?.key === key) return this.cached.info;
    // Concurrent first requests share one hash of a file that may be ~100 MB.
    this.hashing ??= this.hash(st.size).finally(() => (this.hashing = null));
    const info = await this.hashing;
    this.cached = { key, info };
    return info;
  }

  private async hash(sizeBytes: number): Promise<AgentBinaryInfo> {
    const hasher = new Bun.CryptoHasher("sha256");
    for await (const chunk of Bun.file(this.path).stream()) hasher.update(chunk);
    return { path: this.path, sha256: hasher.digest("hex"), sizeBytes, platform: PLATFORM };
  }
}
