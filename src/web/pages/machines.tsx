import { useEffect, useState } from "preact/hooks";
import { api } from "../api.ts";
import { Link } from "../router.tsx";
import { useApi, useLoader } from "../use-api.ts";
import { Empty, ErrorBox, Loading } from "../ui/states.tsx";

interface Machine {
  id: string;
  hostname: string;
  site_code: string | null;
  status: "online" | "offline";
  last_seen_at: string | null;
  labels: { tags?: string[] };
  inventory: { os?: { name?: string; version?: string }; users?: string[] };
  external_ip: string | null;
  agent_version: string | null;
  enrollment_state: string;
  disabled_at: string | null;
  live_sessions: Array<{ id: string; technician: string; viewers: number }>;
}
interface Page {
  machines: Machine[];
  next_cursor: string | null;
}

/** Presence refreshes on its own this often. */
const LIVE_MS = 3_000;
/** Rows per "Load more"; the API takes at most 500 a request. */
const PAGE = 100;
const MAX_LIMIT = 500;

/**
 * The machines list: the M5 search syntax, filters by site, status and tag, presence that
 * updates without a reload, who is connected now, and more rows on demand.
 */
export function MachinesPage() {
  const [q, setQ] = useState(new URLSearchParams(location.search).get("q") ?? "");
  const [tag, setTag] = useState("");
  const [debounced, setDebounced] = useState(q.trim());
  const [debouncedTag, setDebouncedTag] = useState("");
  const [site, setSite] = useState("");
  const [status, setStatus] = useState("");

  // Typing in the search or tag box asks the server once it pauses, not at every key.
  useEffect(() => {
    const t = setTimeout(() => {
      setDebounced(q.trim());
      setDebouncedTag(tag.trim());
    }, 250);
    return () => clearTimeout(t);
  }, [q, tag]);

  const params = new URLSearchParams();
  if (debounced) params.set("q", debounced);
  if (site) params.set("site_id", site);
  if (status) params.set("status", status);
  if (debouncedTag) params.set("tag", debouncedTag);
  const filters = params.toString();

  // How many rows to show; back to one page when the filters change.
  const [shown, setShown] = useState({ filters, want: PAGE });
  const want = shown.filters === filters ? shown.want : PAGE;
  useEffect(() => setShown({ filters, want: PAGE }), [filters]); // so going back to earlier filters starts from one page too

  // Every refresh reloads all the rows shown (not only the first page), so presence stays live
  // on rows from "Load more" too; the loader is keyed by the filters, so an answer for
  // filters no longer current (a "Load more" in flight when they changed) is dropped.
  const list = useLoader<Page>(`/api/machines?${filters}`, async () => {
    const machines: Machine[] = [];
    let cursor: string | null = null;
    do {
      const p = new URLSearchParams(filters);
      p.set("limit", String(Math.min(MAX_LIMIT, want - machines.length)));
      if (cursor) p.set("cursor", cursor);
      const page: Page = await api<Page>("GET", `/api/machines?${p}`);
      machines.push(...page.machines);
      cursor = page.next_cursor;
    } while (cursor && machines.length < want);
    return { machines, next_cursor: cursor };
  }, LIVE_MS);
  const sites = useApi<{ sites: Array<{ id: string; name: string; code: string }> }>("/api/sites");

  // After the render that raised `want`, so the loader sees it.
  useEffect(() => {
    if (want > PAGE) list.reload();
  }, [want]);

  const rows = list.data?.machines ?? [];
  const cursor = list.data?.next_cursor ?? null;
  // Fewer rows than wanted while there are more: a "Load more" is on its way.
  const loadingMore = list.loading && cursor !== null && rows.length < want;
  const loadMore = () => setShown({ filters, want: want + PAGE });

  return (
    <section class="machines">
      <header class="page-head">
        <h1>Machines</h1>
        <div class="filters">
          <input type="search" aria-label="Search machines" placeholder='Search: host:web os:ubuntu tag:prod "two words"' value={q} onInput={(e) => setQ(e.currentTarget.value)} />
          {sites.data && sites.data.sites.length > 0 && (
            <select aria-label="Site" value={site} onChange={(e) => setSite(e.currentTarget.value)}>
              <option value="">All sites</option>
              {sites.data.sites.map((s) => <option value={s.id}>{s.name}</option>)}
            </select>
          )}
          <select aria-label="Status" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
            <option value="">Any status</option>
            <option value="online">Online</option>
            <option value="offline">Offline</option>
          </select>
          <input aria-label="Tag" placeholder="Tag" value={tag} onInput={(e) => setTag(e.currentTarget.value)} />
        </div>
      </header>
      {list.error !== null && <ErrorBox error={list.error} retry={list.reload} />}
      {list.data === null && list.error === null && <Loading what="machines" />}
      {list.data !== null && rows.length === 0 && <Empty>{debounced || site || status || debouncedTag ? "No machine matches." : "No machines yet. Enroll one from a site's install command."}</Empty>}
      {rows.length > 0 && (
        <table class="list" aria-label="Machines">
          <thead>
            <tr><th>Host</th><th>Status</th><th class="wide">OS</th><th class="wide">Site</th><th class="wide">Tags</th><th>Connected</th></tr>
          </thead>
          <tbody>
            {rows.map((m) => (
              <tr key={m.id} data-machine={m.id}>
                <td><Link href={`/machines/${m.id}`}>{m.hostname}</Link></td>
                <td><span class={`presence ${m.status}`}>{m.status}</span>{m.enrollment_state !== "active" && <span class="badge">{m.enrollment_state}</span>}{m.disabled_at && <span class="badge">disabled</span>}</td>
                <td class="wide">{[m.inventory.os?.name, m.inventory.os?.version].filter(Boolean).join(" ") || "—"}</td>
                <td class="wide">{m.site_code ?? "—"}</td>
                <td class="wide">{(m.labels.tags ?? []).join(", ") || "—"}</td>
                <td>{m.live_sessions.map((s) => s.technician).join(", ")}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {cursor && <button type="button" class="more" onClick={loadMore} disabled={loadingMore}>{loadingMore ? "Loading more…" : "Load more"}</button>}
    </section>
  );
}
