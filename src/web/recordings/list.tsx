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
  const path = props.sessionId ? `/api/sessions/${props.sessionId}/recordings` : `/api/machines/${props.machineId}/recordings`;
  const list = useApi<{ recordings: Recording[] }>(path);
  if (list.error !== null) return <ErrorBox error={list.error} retry={list.reload} />;
  if (!list.data) return <Loading what="recordings" />;
  if (list.data.recordings.length === 0) return <Empty>No recordings.</Empty>;
  return (
    <table class="list" aria-label="Recordings">
      <thead><tr><th>Started</th><th>Length</th><th class="wide">Size</th><th /></tr></thead>
      <tbody>
        {list.data.recordings.map((r) => (
          <tr key={r.id}>
            <td>{new Date(r.started_at).toLocaleString()}</td>
            <td>{r.duration_s === null ? "recording…" : `${r.duration_s.toFixed(1)} s`}</td>
            <td class="wide">{(r.bytes / 1024).toFixed(1)} KB</td>
            <td><Link href={`/recordings/${r.id}`}>Play</Link> · <a href={`/api/recordings/${r.id}/cast`} download>.cast</a></td>
          </tr>
        ))}
      </tbody>
    </table>
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
