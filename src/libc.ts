/**
 * The few libc calls Bun does not offer (through bun:ffi): `listen` again on a listening socket
 * (src/http/listen-backlog.ts) and `flock` (src/store/data-dir-lock.ts). Loaded on first use;
 * throws where there is no libc to load (the callers say what they do without it).
 */
export interface Libc {
  listen(fd: number, backlog: number): number;
  flock(fd: number, operation: number): number;
  /** The calling thread's errno, right after a call that failed. */
  errno(): number;
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;
/** EWOULDBLOCK: 11 on Linux, 35 on macOS. */
export const EWOULDBLOCK = process.platform === "darwin" ? 35 : 11;

let loaded: Libc | null = null;

export function libc(): Libc {
  if (loaded) return loaded;
  const { dlopen, FFIType, read } = require("bun:ffi") as typeof import("bun:ffi");
  const errno = process.platform === "darwin" ? "__error" : "__errno_location";
  const errors: string[] = [];
  // glibc, musl (Alpine), macOS.
  for (const name of ["libc.so.6", "libc.musl-x86_64.so.1", "libc.musl-aarch64.so.1", "libc.so", "libc.dylib"]) {
    try {
      const { symbols } = dlopen(name, {
        listen: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
        flock: { args: [FFIType.i32, FFIType.i32], returns: FFIType.i32 },
        [errno]: { args: [], returns: FFIType.ptr },
      });
      const where = symbols[errno]!;
      loaded = {
        listen: (fd, backlog) => symbols.listen(fd, backlog),
        flock: (fd, operation) => symbols.flock(fd, operation),
        errno: () => read.i32(where()!),
      };
      return loaded;
    } catch (err) {
      errors.push(`${name}: ${(err as Error).message}`);
    }
  }
  throw new Error(`no libc to load (${errors.join("; ")})`);
}
