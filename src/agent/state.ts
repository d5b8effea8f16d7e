import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";

/**
 * The agent's state directory (0700), every file in it 0600:
 *   private_key.pem   Ed25519 private key, PKCS8 PEM
 *   public_key        the raw 32-byte public key, base64 (what was registered at enrollment)
 *   machine_uid_seed  a random UUID, only when the machine offers no stable identifier
 *   credentials.json  { machine_id, key: "cak_…", machine_uid, server, enrolled_at }
 * Files are written to a temporary name and renamed, so a crash never leaves half a key.
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
  server: z.string(),
  enrolled_at: z.string(),
});
export type Credentials = z.infer<typeof Credentials>;

/** The stored state is there but unusable: a hard stop, never a silent re-enrollment. */
export class StateError extends Error {}

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

  write(name: string, content: string): void {
    const p = this.path(name);
    const tmp = `${p}.tmp-${process.pid}`;
    writeFileSync(tmp, content, { mode: 0o600 });
    chmodSync(tmp, 0o600); // whatever the umask said
    renameSync(tmp, p);
  }

  /** The stored credentials; null when not enrolled yet; StateError when present but corrupt. */
  credentials(): Credentials | null {
    const raw = this.read(FILES.credentials);
    if (raw === null) return null;
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      throw new StateError(`${this.path(FILES.credentials)} is not valid JSON; refusing to re-enroll (remove the state dir to enroll again)`);
    }
    const parsed = Credentials.safeParse(value);
    if (!parsed.success) throw new StateError(`${this.path(FILES.credentials)} is malformed; refusing to re-enroll (remove the state dir to enroll again)`);
    return parsed.data;
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
