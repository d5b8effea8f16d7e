import { useState } from "preact/hooks";
import { api } from "../api.ts";
import { Link } from "../router.tsx";
import { ActionButton } from "../ui/action.tsx";
import { ErrorBox, Loading } from "../ui/states.tsx";
import { useApi } from "../use-api.ts";

interface SupportCode {
  code: string;
  session_id: string;
  expires_at: string;
  command: string;
}
interface Session {
  id: string;
  state: string;
  consent: string;
  hostname: string | null;
  end_reason: string | null;
}

const STEPS: Record<string, string> = {
  waiting_for_agent: "Waiting for the person to run the command…",
  awaiting_consent: "The person is connected and is being asked to allow the session…",
  active: "The person allowed the session.",
  agent_lost: "The person's connection dropped; waiting for it to come back…",
  ended: "The session has ended.",
};

/** Attended support: make a code, give the person the command, watch them arrive and consent. */
export function SupportPage() {
  const [code, setCode] = useState<SupportCode | null>(null);
  return (
    <section class="support">
      <h1>Support a person</h1>
      {!code && (
        <>
          <p>Make a one-time code. The person runs the command shown on their computer and allows you in.</p>
          <ActionButton run={async () => setCode(await api<SupportCode>("POST", "/api/support-codes", {}))}>Create a support code</ActionButton>
        </>
      )}
      {code && <Waiting code={code} onDone={() => setCode(null)} />}
    </section>
  );
}

function Waiting(props: { code: SupportCode; onDone(): void }) {
  const s = useApi<Session>(`/api/sessions/${props.code.session_id}`, 1_000);
  const state = s.data?.state ?? "waiting_for_agent";
  return (
    <div class="code-card">
      <p class="code" aria-label="Support code">{props.code.code.replace(/(\d{3})(\d{3})/, "$1 $2")}</p>
      <p>Valid until {new Date(props.code.expires_at).toLocaleTimeString()}. The person runs:</p>
      <pre><code>{props.code.command}</code></pre>
      {s.error !== null && <ErrorBox error={s.error} retry={s.reload} />}
      {!s.data && s.error === null && <Loading />}
      <p class={`step ${state}`} role="status" aria-label="Session state">
        {STEPS[state] ?? state}
        {s.data?.hostname && ` (${s.data.hostname})`}
        {state === "ended" && s.data?.end_reason && ` Reason: ${s.data.end_reason.replaceAll("_", " ")}.`}
      </p>
      {state === "active" && <Link href={`/sessions/${props.code.session_id}`} class="button">Open the session</Link>}
      {state === "waiting_for_agent" && (
        <ActionButton class="secondary" run={async () => {
          await api("POST", `/api/support-codes/${props.code.code}/cancel`);
          props.onDone();
        }}>Cancel the code</ActionButton>
      )}
      {state === "ended" && <button type="button" onClick={props.onDone}>New code</button>}
    </div>
  );
}
