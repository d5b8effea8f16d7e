import { useCallback, useEffect, useState } from "preact/hooks";
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
  const [state, setState] = useState<{ data: T | null; error: unknown; loading: boolean }>({ data: null, error: null, loading: path !== null });
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((n) => n + 1), []);
  useEffect(() => {
    if (path === null) return;
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    api<T>("GET", path).then(
      (data) => live && setState({ data, error: null, loading: false }),
      (error) => live && setState((s) => ({ data: s.data, error, loading: false })),
    );
    return () => {
      live = false;
    };
  }, [path, tick]);
  useEffect(() => {
    if (!everyMs || path === null) return;
    const t = setInterval(reload, everyMs);
    return () => clearInterval(t);
  }, [path, everyMs, reload]);
  return { ...state, reload };
}
