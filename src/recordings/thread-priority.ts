import { dlopen, FFIType } from "bun:ffi";

/**
 * Lowers the calling thread's CPU priority to the least (nice 19), for background work that
 * must not take CPU from the relay: on Linux a thread is a task of its own, so
 * setpriority(PRIO_PROCESS, gettid()) affects this thread only. Elsewhere, or if libc cannot
 * be loaded, it does nothing and says so.
 */
export function lowerThisThreadsPriority(nice = 19): boolean {
  if (process.platform !== "linux") return false;
  try {
    const libc = dlopen("libc.so.6", {
      gettid: { args: [], returns: FFIType.i32 },
      setpriority: { args: [FFIType.i32, FFIType.u32, FFIType.i32], returns: FFIType.i32 },
    });
    try {
      return libc.symbols.setpriority(0 /* PRIO_PROCESS */, libc.symbols.gettid(), nice) === 0;
    } finally {
      libc.close();
    }
  } catch {
    return false;
  }
}
