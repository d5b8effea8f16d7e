import { useRef, useState } from "preact/hooks";
import { api } from "../../api.ts";
import { Empty, ErrorBox, Loading } from "../../ui/states.tsx";
import { useApi } from "../../use-api.ts";

interface AuditEvent {
  id: string;
  at: string;
  type: string;
  outcome: "success" | "failure";
  actor_name: string | null;
  actor_id: string | null;
  target_type: string | null;
  target_id: string | null;
  ip: string | null;
  correlation_id: string | null;
  details: Record<string, unknown>;
}
interface Page {
  events: AuditEvent[];
  next_cursor: string | null;
}

/** The audit log, newest first, filtered by type, actor, target and outcome, paged on demand. */
export function AuditPage() {
  const [filters, setFilters] = useState({ type: "", actor: "", target: "", outcome: "" });
  const [older, setOlder] = useState<{ events: AuditEvent[]; cursor: string | null } | null>(null);
  const [moreError, setMoreError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  // Bumped on every filter change: an older page asked for under other filters is dropped.
  const generation = useRef(0);
  // Set synchronously, so a double click asks for the next page once.
  const asking = useRef(false);
  const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
  q.set("limit", "100");
  const page = useApi<Page>(`/api/audit?${q}`);
  const set = (k: keyof typeof filters) => (e: Event) => {
    generation.current++;
    asking.current = false;
    setBusy(false);
    setOlder(null);
    setMoreError(null);
    setFilters({ ...filters, [k]: (e.currentTarget as HTMLInputElement).value.trim() });
  };
  const events = [...(page.data?.events ?? []), ...(older?.events ?? [])];
  const cursor = older ? older.cursor : page.data?.next_cursor ?? null;
  return (
    <section>
      <h1>Audit log</h1>
      <div class="filters">
        <input aria-label="Event type" placeholder="Type (e.g. auth.login)" onChange={set("type")} />
        <input aria-label="Actor" placeholder="Actor id or name" onChange={set("actor")} />
        <input aria-label="Target" placeholder="Target id" onChange={set("target")} />
        <select aria-label="Outcome" onChange={set("outcome")}><option value="">Any outcome</option><option value="success">Success</option><option value="failure">Failure</option></select>
      </div>
      {page.error !== null && <ErrorBox error={page.error} retry={page.reload} />}
      {!page.data && page.error === null && <Loading what="events" />}
      {page.data && events.length === 0 && <Empty>No event matches.</Empty>}
      {events.length > 0 && (
        <table class="list" aria-label="Audit events">
          <thead><tr><th>When</th><th>Event</th><th>Actor</th><th class="wide">Target</th><th class="wide">IP</th><th class="wide">Details</th></tr></thead>
          <tbody>
            {events.map((e) => (
              <tr key={e.id} class={e.outcome}>
                <td>{new Date(e.at).toLocaleString()}</td>
                <td>{e.type}{e.outcome === "failure" && <span class="badge">failure</span>}</td>
                <td>{e.actor_name ?? e.actor_id ?? "—"}</td>
                <td class="wide">{e.target_type ? `${e.target_type} ${e.target_id ?? ""}` : "—"}</td>
                <td class="wide">{e.ip ?? "—"}</td>
                <td class="wide"><code>{JSON.stringify(e.details)}</code></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {cursor && <button type="button" class="more" disabled={busy} onClick={async () => {
        if (asking.current) return;
        asking.current = true;
        setBusy(true);
        setMoreError(null);
        const asked = generation.current;
        try {
          const p = new URLSearchParams(q);
          p.set("cursor", cursor);
          const next = await api<Page>("GET", `/api/audit?${p}`);
          if (asked !== generation.current) return;
          setOlder((prev) => ({ events: [...(prev?.events ?? []), ...next.events], cursor: next.next_cursor }));
        } catch (e) {
          if (asked === generation.current) setMoreError(e);
        } finally {
          if (asked === generation.current) {
            asking.current = false;
            setBusy(false);
          }
        }
      }}>Older events</button>}
      {moreError !== null && <ErrorBox error={moreError} />}
    </section>
  );
}
