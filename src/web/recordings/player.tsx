import * as AsciinemaPlayer from "asciinema-player";
import "asciinema-player/dist/bundle/asciinema-player.css";
import { useEffect, useRef, useState } from "preact/hooks";
import { useApi } from "../use-api.ts";
import { ErrorBox, Loading } from "../ui/states.tsx";

interface Recording {
  id: string;
  session_id: string;
  cols: number;
  rows: number;
  started_at: string;
  ended_at: string | null;
  bytes: number;
  duration_s: number | null;
}
type Player = { seek(t: number): Promise<void>; play(): Promise<void>; pause(): void; dispose(): void; getCurrentTime(): number | undefined; getDuration(): number | null };

const SPEEDS = [0.5, 1, 2, 4];

/**
 * One recording played with asciinema-player (its own chunk: only this page loads it), from
 * the server's .cast export; seek with the player's bar or the jump buttons, change speed, or
 * download the .cast.
 */
export function RecordingPage(props: { id: string }) {
  const rec = useApi<Recording>(`/api/recordings/${props.id}`);
  const host = useRef<HTMLDivElement>(null);
  const player = useRef<Player | null>(null);
  const [speed, setSpeed] = useState(1);
  const [error, setError] = useState<unknown>(null);
  const cast = `/api/recordings/${props.id}/cast`;

  // Where playback was when the player was last torn down (a speed change rebuilds it): the
  // cleanup below nulls `player` before the next run, so the time is kept here.
  const resumeAt = useRef({ id: props.id, t: 0 });

  useEffect(() => {
    if (!rec.data || !host.current) return;
    const at = resumeAt.current.id === props.id ? resumeAt.current.t : 0;
    try {
      player.current = AsciinemaPlayer.create(cast, host.current, { speed, startAt: at, fit: "width", idleTimeLimit: 2, controls: true, preload: true }) as unknown as Player;
      // startAt applies only once playback starts; the seek shows that frame and time now (and
      // is what getCurrentTime answers if the speed changes again before playing).
      if (at > 0) void player.current.seek(at).catch(() => {});
    } catch (e) {
      setError(e);
    }
    return () => {
      resumeAt.current = { id: props.id, t: player.current?.getCurrentTime() ?? 0 };
      player.current?.dispose();
      player.current = null;
    };
  }, [rec.data, speed]);

  if (rec.error !== null) return <ErrorBox error={rec.error} retry={rec.reload} />;
  if (!rec.data) return <Loading what="the recording" />;
  const r = rec.data;
  return (
    <section class="recording">
      <header class="page-head">
        <h1>Recording</h1>
        <div class="filters">
          <label>Speed <select aria-label="Speed" value={String(speed)} onChange={(e) => setSpeed(Number(e.currentTarget.value))}>{SPEEDS.map((s) => <option value={String(s)}>{s}×</option>)}</select></label>
          <button type="button" onClick={() => void player.current?.seek(0).then(() => player.current?.play())}>Play from the start</button>
          <button type="button" onClick={() => player.current?.seek(Math.max(0, (player.current.getCurrentTime() ?? 0) - 10))}>−10 s</button>
          <button type="button" onClick={() => player.current?.seek((player.current.getCurrentTime() ?? 0) + 10)}>+10 s</button>
          <a href={cast} download={`tether-${r.id}.cast`}>Download .cast</a>
        </div>
      </header>
      <p class="meta">{new Date(r.started_at).toLocaleString()} · {r.cols}×{r.rows} · {(r.bytes / 1024).toFixed(1)} KB · {r.duration_s === null ? "still recording" : `${r.duration_s.toFixed(1)} s`}</p>
      {error !== null && <ErrorBox error={error} />}
      <div ref={host} class="player" data-recording={r.id} />
    </section>
  );
}
