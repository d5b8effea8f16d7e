import { useEffect, useState } from "preact/hooks";
import { navigate } from "../router.tsx";
import { Empty, ErrorBox, Loading } from "../ui/states.tsx";
import { useApi } from "../use-api.ts";

interface Change {
  path: string;
  before?: unknown;
  after?: unknown;
}
interface Step {
  seq: number;
  at: number;
  event: string;
  state: unknown;
  changes: Change[];
  effects: Array<{ type: string }>;
}
interface Timeline {
  address: string;
  version: number;
  from: number;
  steps: Step[];
  truncated: boolean;
}

const KINDS = ["machine", "session", "room"];
const show = (v: unknown) => (v === undefined ? "—" : JSON.stringify(v));

/**
 * An actor's history, step by step (P7): pick kind/id, then walk its journal with the state
 * after each event, what changed in its context, and the effects it asked for.
 */
export function TimelinePage(props: { kind?: string; id?: string }) {
  const [kind, setKind] = useState(props.kind ?? "machine");
  const [id, setId] = useState(props.id ?? "");
  const t = useApi<Timeline>(props.kind && props.id ? `/api/actors/${props.kind}/${props.id}/timeline` : null);
  const [at, setAt] = useState(0);
  useEffect(() => setAt(0), [t.data]);
  const step = t.data?.steps[at];

  return (
    <section class="timeline">
      <h1>Actor timeline</h1>
      <form class="inline-form" aria-label="Pick an actor" onSubmit={(e) => {
        e.preventDefault();
        navigate(`/actors/${kind}/${id.trim()}`);
      }}>
        <select aria-label="Kind" value={kind} onChange={(e) => setKind(e.currentTarget.value)}>{KINDS.map((k) => <option value={k}>{k}</option>)}</select>
        <input aria-label="Actor id" placeholder="id (uuid)" value={id} onInput={(e) => setId(e.currentTarget.value)} required pattern="[0-9a-fA-F\-]{36}" size={40} />
        <button type="submit">Show</button>
      </form>
      {!props.id && <Empty>Pick a machine, session or room by its id.</Empty>}
      {t.error !== null && <ErrorBox error={t.error} retry={t.reload} />}
      {props.id && !t.data && t.error === null && <Loading what="the history" />}
      {t.data && t.data.steps.length === 0 && <Empty>No events after seq {t.data.from}.</Empty>}
      {t.data && step && (
        <div class="steps">
          <ol class="events" aria-label="Events">
            {t.data.steps.map((s, i) => (
              <li key={s.seq}>
                <button type="button" class={i === at ? "current" : "secondary"} aria-current={i === at} onClick={() => setAt(i)}>#{s.seq} {s.event}</button>
              </li>
            ))}
          </ol>
          <div class="step" aria-label="Step">
            <div class="stepper">
              <button type="button" disabled={at === 0} onClick={() => setAt(at - 1)}>← Previous</button>
              <span>Step {at + 1} of {t.data.steps.length}{t.data.truncated ? " (first 500)" : ""}</span>
              <button type="button" disabled={at === t.data.steps.length - 1} onClick={() => setAt(at + 1)}>Next →</button>
            </div>
            <h2>#{step.seq} {step.event}</h2>
            <p class="meta">{new Date(step.at).toLocaleString()} · state <code>{show(step.state)}</code></p>
            <h3>Context changes</h3>
            {step.changes.length === 0 ? <p class="meta">none</p> : (
              <table class="list" aria-label="Context changes">
                <thead><tr><th>Path</th><th>Before</th><th>After</th></tr></thead>
                <tbody>{step.changes.map((c) => <tr><td><code>{c.path}</code></td><td><code>{show(c.before)}</code></td><td><code>{show(c.after)}</code></td></tr>)}</tbody>
              </table>
            )}
            <h3>Effects</h3>
            {step.effects.length === 0 ? <p class="meta">none</p> : <ul>{step.effects.map((e) => <li><code>{e.type}</code></li>)}</ul>}
          </div>
        </div>
      )}
    </section>
  );
}
