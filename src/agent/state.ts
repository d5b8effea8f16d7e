import fs, { chmodSync, existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";

/**
 * The agent's state directory (0700), every file in it 0600:
 *   private_key.pem   Ed25519 private key, PKCS8 PEM
 *   public_key        the raw 32-byte public key, base64 (what was registered at enrollment)
 *   machine_uid_seed  a random UUID, only when the machine offers no stable identifier
 *   credentials.json  { machine_id, key: "cak_…", machine_uid, uid_parts, server, enrolled_at }
 * Files are written to a temporary name, flushed to disk, renamed, and the directory flushed, so
 * neither a crash nor a power loss leaves half a key or an empty file in its place.
 */
export const FILES = {
  privateKey: "private_key.pem",
  publicKey: "public_key",
  seed: "machine_uid_seed",
  credentials: "credentials.json",
} as const;

export const Credentials = z.object({
  machine_id: z.uuid(),
  key: z.string().startsWith("cak_"),
  machine_uid: z.string(),
  /** Each machine_uid source's fingerprint (identity.ts); absent in credentials of older agents. */
  uid_parts: z.record(z.string(), z.string()).optional(),
  server: z.string(),
  enrolled_at: z.string(),
});
export type Credentials = z.infer<typeof Credentials>;

/** The stored state is there but unusable: re-enrollment (loud) when the agent can, else a hard stop (agent.ts). */
export class StateError extends Error {}

/**
 * credentials.json is there but empty or not credentials (a power loss under an older agent
 * that did not flush it, an edit): agent.ts re-enrolls when it has an enrollment key.
 */
export class CorruptCredentials extends StateError {}

export class StateDir {
  constructor(readonly dir: string) {}

  /** Creates the directory (0700) and tightens it if it is looser; returns the fixes made. */
  ensure(): string[] {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    return this.tighten(this.dir, 0o700);
  }

  path(name: string): string {
    return join(this.dir, name);
  }

  has(name: string): boolean {
    return existsSync(this.path(name));
  }

  read(name: string): string | null {
    const p = this.path(name);
    if (!existsSync(p)) return null;
    this.tighten(p, 0o600);
    return readFileSync(p, "utf8");
  }

  /**
   * Atomic and durable: without the fsyncs, a power loss soon after a rename can leave the new
   * name pointing at an empty file (the data was never flushed) or at the old file. Calls go
   * through the `fs` object so a test can see their order.
   */
  write(name: string, content: string): void {
    const p = this.path(name);
    const tmp = `${p}.tmp-${process.pid}`;
    const fd = fs.openSync(tmp, "w", 0o600);
    try {
      fs.fchmodSync(fd, 0o600); // whatever the umask said
      fs.writeFileSync(fd, content);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, p);
    this.syncDir(); // the rename itself
  }

  /** The stored credentials; null when not enrolled yet; CorruptCredentials when present but unusable. */
  credentials(): Credentials | null {
    const raw = this.read(FILES.credentials);
    if (raw === null) return null;
    const path = this.path(FILES.credentials);
    if (raw.trim() === "") throw new CorruptCredentials(`${path} is empty (a power loss while it was written?)`);
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      throw new CorruptCredentials(`${path} is not valid JSON`);
    }
    const parsed = Credentials.safeParse(value);
    if (!parsed.success) throw new CorruptCredentials(`${path} does not hold agent credentials`);
    return parsed.data;
  }

  /** Removes a file and makes the removal durable; no error when it is not there. */
  remove(name: string): void {
    fs.rmSync(this.path(name), { force: true });
    this.syncDir();
  }

  private syncDir(): void {
    const dir = fs.openSync(this.dir, "r");
    try {
      fs.fsyncSync(dir);
    } finally {
      fs.closeSync(dir);
    }
  }

  saveCredentials(c: Credentials): void {
    this.write(FILES.credentials, JSON.stringify(c, null, 2) + "\n");
  }

  /** chmod down to `mode` when group/other bits are set; returns a description of the fix. */
  private tighten(p: string, mode: number): string[] {
    const current = statSync(p).mode & 0o777;
    if ((current & ~mode) === 0) return [];
    chmodSync(p, mode);
    return [`${p}: ${current.toString(8)} → ${mode.toString(8)}`];
  }
}
