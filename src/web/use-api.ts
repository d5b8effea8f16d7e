import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { api } from "./api.ts";

export interface Loaded<T> {
  data: T | null;
  error: unknown;
  loading: boolean;
  reload(): void;
}

/**
 * GETs `path` (null: nothing yet) and keeps the last good answer while reloading, so a page
 * that refreshes itself (live presence) does not flash its loading state. `everyMs` polls.
 */
export function useApi<T>(path: string | null, everyMs?: number): Loaded<T> {
  return useLoader<T>(path, () => api<T>("GET", path!), everyMs);
}

/**
 * `useApi` over any loader: `key` names what is loaded (null: nothing yet); `load` is called
 * with the latest props. One request at a time: a poll is scheduled `everyMs` after the last
 * answer, so a server slower than the interval still updates the page and requests never pile
 * up; `reload()` while one is in flight runs once more after it. A new `key` drops the old
 * key's data and discards its late answers.
 */
export function useLoader<T>(key: string | null, load: () => Promise<T>, everyMs?: number): Loaded<T> {
  const [state, setState] = useState<{ key: string | null; data: T | null; error: unknown; loading: boolean }>({ key, data: null, error: null, loading: key !== null });
  const loadRef = useRef(load);
  loadRef.current = load;
  const everyRef = useRef(everyMs);
  everyRef.current = everyMs;
  const runRef = useRef<() => void>(() => {});
  useEffect(() => {
    if (key === null) return;
    let live = true;
    let busy = false;
    let again = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const run = () => {
      clearTimeout(timer);
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      setState((s) => ({ ...s, key, loading: true }));
      loadRef.current().then(
        (data) => live && setState({ key, data, error: null, loading: false }),
        (error) => live && setState((s) => ({ key, data: s.key === key ? s.data : null, error, loading: false })),
      ).finally(() => {
        busy = false;
        if (!live) return;
        if (again) {
          again = false;
          run();
        } else if (everyRef.current) timer = setTimeout(run, everyRef.current);
      });
    };
    runRef.current = run;
    setState({ key, data: null, error: null, loading: true });
    run();
    return () => {
      live = false;
      clearTimeout(timer);
      if (runRef.current === run) runRef.current = () => {};
    };
  }, [key]);
  const reload = useCallback(() => runRef.current(), []);
  // Until the effect has run for a new key, the old key's answer is not shown under it.
  if (state.key !== key) return { data: null, error: null, loading: key !== null, reload };
  return { ...state, reload };
}
