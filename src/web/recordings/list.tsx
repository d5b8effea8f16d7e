import { useRef, useState } from "preact/hooks";
import { api } from "../api.ts";
import { Link } from "../router.tsx";
import { Empty, ErrorBox, Loading } from "../ui/states.tsx";
import { useApi } from "../use-api.ts";

interface Recording {
  id: string;
  session_id: string;
  channel: number;
  started_at: string;
  ended_at: string | null;
  bytes: number;
  duration_s: number | null;
}

/** The recordings of a session or of a machine, newest first, each linking to its player. */
export function RecordingList(props: { sessionId?: string; machineId?: string }) {
  // A session's route answers all of them; a machine's answers pages of 100 with a cursor.
  const path = props.sessionId ? `/api/sessions/${props.sessionId}/recordings` : `/api/machines/${props.machineId}/recordings`;
  const list = useApi<{ recordings: Recording[]; next_cursor?: string | null }>(path);
  const [more, setMore] = useState<{ path: string; recordings: Recording[]; cursor: string | null } | null>(null);
  const [loadingMore, setLoadingMore] = useState(false);
  const [moreError, setMoreError] = useState<unknown>(null);
  const current = useRef(path);
  current.current = path;
  const extra = more?.path === path ? more : null;
  const cursor = extra ? extra.cursor : (list.data?.next_cursor ?? null);

  const loadMore = async () => {
    if (!cursor) return;
    const from = path;
    setLoadingMore(true);
    setMoreError(null);
    try {
      const page = await api<{ recordings: Recording[]; next_cursor: string | null }>("GET", `${from}?cursor=${encodeURIComponent(cursor)}`);
      // Another session or machine by now: this page is not theirs.
      if (current.current === from) setMore((m) => ({ path: from, recordings: [...(m?.path === from ? m.recordings : []), ...page.recordings], cursor: page.next_cursor }));
    } catch (e) {
      setMoreError(e);
    } finally {
      setLoadingMore(false);
    }
  };

  if (list.error !== null) return <ErrorBox error={list.error} retry={list.reload} />;
  if (!list.data) return <Loading what="recordings" />;
  if (list.data.recordings.length === 0) return <Empty>No recordings.</Empty>;
  const rows = [...list.data.recordings, ...(extra?.recordings ?? [])];
  return (
    <>
      <table class="list" aria-label="Recordings">
        <thead><tr><th>Started</th><th>Length</th><th class="wide">Size</th><th /></tr></thead>
        <tbody>
          {rows.map((r) => (
            <tr key={r.id}>
              <td>{new Date(r.started_at).toLocaleString()}</td>
              <td>{r.duration_s === null ? "recording…" : `${r.duration_s.toFixed(1)} s`}</td>
              <td class="wide">{(r.bytes / 1024).toFixed(1)} KB</td>
              <td><Link href={`/recordings/${r.id}`}>Play</Link> · <a href={`/api/recordings/${r.id}/cast`} download>.cast</a></td>
            </tr>
          ))}
        </tbody>
      </table>
      {cursor && <button type="button" class="more" onClick={loadMore} disabled={loadingMore}>{loadingMore ? "Loading more…" : "Load more"}</button>}
      {moreError !== null && <ErrorBox error={moreError} retry={loadMore} />}
    </>
  );
}

/** /recordings?session=<id> or ?machine=<id>. */
export function RecordingsPage() {
  const q = new URLSearchParams(location.search);
  const sessionId = q.get("session") ?? undefined;
  const machineId = q.get("machine") ?? undefined;
  return (
    <section>
      <h1>Recordings</h1>
      {sessionId || machineId ? <RecordingList sessionId={sessionId} machineId={machineId} /> : <Empty>Open recordings from a machine or a session.</Empty>}
    </section>
  );
}
