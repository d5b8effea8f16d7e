import type { ComponentChildren } from "preact";
import { useState } from "preact/hooks";
import { api } from "../api.ts";
import type { Me } from "../app.tsx";
import { Link, navigate } from "../router.tsx";
import { useApi } from "../use-api.ts";
import { formatBytes, formatDuration, formatTime } from "../ui/format.ts";
import { Empty, ErrorBox, Loading } from "../ui/states.tsx";

interface Inventory {
  os?: { name?: string; version?: string };
  kernel?: string;
  cpu?: { model?: string; cores?: number };
  memory_bytes?: number;
  disks?: Array<{ mount?: string; size_bytes?: number; free_bytes?: number }>;
  hostname?: string;
  private_ips?: string[];
  macs?: string[];
  users?: string[];
  uptime_s?: number;
  timezone?: string;
  agent_version?: string;
  elevated?: boolean;
}
interface Machine {
  id: string;
  hostname: string;
  site_code: string | null;
  labels: { company?: string; site?: string; department?: string; device_type?: string; tags?: string[] };
  enrollment_state: "active" | "pending";
  status: "online" | "offline";
  last_seen_at: string | null;
  created_at: string;
  inventory: Inventory;
  external_ip: string | null;
  agent_version: string | null;
  disabled_at: string | null;
}
interface Session {
  id: string;
  kind: string;
  technician: string;
  state: string;
  end_reason: string | null;
  viewers: number;
  created_at: string;
  ended_at: string | null;
}
interface AgentKey {
  id: string;
  prefix: string;
  created_at: string;
  last_used_at: string | null;
  revoked_at: string | null;
}

/** Presence and the session list refresh on their own this often. */
const LIVE_MS = 5_000;

/**
 * One machine: its inventory (the agent's last report), labels, agent keys (for those who may
 * read them), its sessions, and "connect" in control or view only — joining a live session of
 * the machine when there is one, else opening a new one.
 */
export function MachinePage(props: { id: string }) {
  const machine = useApi<Machine>(`/api/machines/${props.id}`, LIVE_MS);
  // The console's "who am I" is not passed down: asking again keeps app.tsx as it is.
  const me = useApi<Me>("/api/me");
  const can = (p: string) => me.data?.permissions.includes(p) ?? false;
  const sessions = useApi<{ sessions: Session[] }>(can("sessions:read") ? `/api/sessions?machine_id=${props.id}&limit=20` : null, LIVE_MS);
  const keys = useApi<{ keys: AgentKey[] }>(can("agent_keys:read") ? `/api/machines/${props.id}/keys` : null);
  const [connecting, setConnecting] = useState<"control" | "view" | null>(null);
  const [connectError, setConnectError] = useState<unknown>(null);

  if (machine.data === null) {
    return machine.error !== null ? <ErrorBox error={machine.error} retry={machine.reload} /> : <Loading what="the machine" />;
  }
  const m = machine.data;
  const inv = m.inventory;

  const connect = async (access: "control" | "view") => {
    setConnecting(access);
    setConnectError(null);
    try {
      const live = await api<{ sessions: Session[] }>("GET", `/api/sessions?machine_id=${m.id}&live=true&limit=10`);
      const reuse = live.sessions.find((s) => s.state !== "ended");
      const id = reuse ? reuse.id : (await api<Session>("POST", "/api/sessions", { machine_id: m.id })).id;
      navigate(`/sessions/${id}?access=${access}`);
    } catch (e) {
      setConnectError(e);
      setConnecting(null);
    }
  };
  const mayConnect = can("sessions:write") && m.enrollment_state === "active" && !m.disabled_at;
  const setDisabled = async (disabled: boolean) => {
    setConnectError(null);
    try {
      await api("POST", `/api/machines/${m.id}/${disabled ? "disable" : "enable"}`);
      machine.reload();
    } catch (e) {
      setConnectError(e);
    }
  };
  const liveSession = sessions.data?.sessions.find((s) => s.state !== "ended");

  return (
    <section class="machine">
      <header class="page-head">
        <div>
          <p class="sub"><Link href="/">Machines</Link> /</p>
          <h1>{m.hostname}</h1>
          <p class="sub">
            <span class={`presence ${m.status}`}>{m.status}</span>
            {m.status === "offline" && m.last_seen_at && <> · last seen {formatTime(m.last_seen_at)}</>}
            {m.enrollment_state !== "active" && <span class="badge">{m.enrollment_state}</span>}
            {m.disabled_at && <span class="badge" title={`since ${formatTime(m.disabled_at)}`}>disabled</span>}
            {m.site_code && <> · site {m.site_code}</>}
            {can("recordings:read") && <> · <Link href={`/recordings?machine=${m.id}`}>Recordings</Link></>}
            {can("actors:read") && <> · <Link href={`/actors/machine/${m.id}`}>History</Link></>}
          </p>
        </div>
        {(can("sessions:write") || can("machines:write")) && (
          <div class="actions">
            {can("machines:write") && (
              <button type="button" class="secondary" onClick={() => setDisabled(!m.disabled_at)}>{m.disabled_at ? "Enable" : "Disable"}</button>
            )}
            {can("sessions:write") && (
              <>
                <button type="button" disabled={!mayConnect || connecting !== null} onClick={() => connect("control")}>
                  {connecting === "control" ? "Connecting…" : "Connect (control)"}
                </button>
                <button type="button" class="secondary" disabled={!mayConnect || connecting !== null} onClick={() => connect("view")}>
                  {connecting === "view" ? "Connecting…" : "Connect (view only)"}
                </button>
              </>
            )}
          </div>
        )}
      </header>
      {machine.error !== null && <ErrorBox error={machine.error} retry={machine.reload} />}
      {connectError !== null && <ErrorBox error={connectError} />}
      {liveSession && <p class="state notice">A session is live on this machine ({liveSession.technician}, {liveSession.state.replaceAll("_", " ")}): connecting joins it.</p>}

      <div class="cards">
        <section class="card" aria-label="Inventory">
          <h2>Inventory</h2>
          {Object.keys(inv).length === 0 ? (
            <Empty>No report from the agent yet.</Empty>
          ) : (
            <dl class="facts">
              <Fact name="Operating system">{[inv.os?.name, inv.os?.version].filter(Boolean).join(" ")}</Fact>
              <Fact name="Kernel">{inv.kernel}</Fact>
              <Fact name="CPU">{inv.cpu?.model ? `${inv.cpu.model}${inv.cpu.cores ? ` (${inv.cpu.cores} cores)` : ""}` : inv.cpu?.cores ? `${inv.cpu.cores} cores` : undefined}</Fact>
              <Fact name="Memory">{inv.memory_bytes != null ? formatBytes(inv.memory_bytes) : undefined}</Fact>
              <Fact name="Hostname">{inv.hostname}</Fact>
              <Fact name="IP addresses">{inv.private_ips?.join(", ")}</Fact>
              <Fact name="External IP">{m.external_ip ?? undefined}</Fact>
              <Fact name="MAC addresses">{inv.macs?.join(", ")}</Fact>
              <Fact name="Users">{inv.users?.join(", ")}</Fact>
              <Fact name="Uptime">{inv.uptime_s != null ? formatDuration(inv.uptime_s) : undefined}</Fact>
              <Fact name="Time zone">{inv.timezone}</Fact>
              <Fact name="Agent version">{m.agent_version ?? inv.agent_version}</Fact>
              <Fact name="Elevated">{inv.elevated == null ? undefined : inv.elevated ? "yes" : "no"}</Fact>
            </dl>
          )}
          {inv.disks && inv.disks.length > 0 && (
            <table class="list compact" aria-label="Disks">
              <thead><tr><th>Mount</th><th>Size</th><th>Free</th></tr></thead>
              <tbody>
                {inv.disks.map((d) => (
                  <tr key={d.mount}><td>{d.mount ?? "—"}</td><td>{formatBytes(d.size_bytes)}</td><td>{formatBytes(d.free_bytes)}</td></tr>
                ))}
              </tbody>
            </table>
          )}
        </section>

        <section class="card" aria-label="Labels">
          <h2>Labels</h2>
          <dl class="facts">
            <Fact name="Company">{m.labels.company}</Fact>
            <Fact name="Site">{m.labels.site}</Fact>
            <Fact name="Department">{m.labels.department}</Fact>
            <Fact name="Device type">{m.labels.device_type}</Fact>
            <Fact name="Tags">{m.labels.tags?.length ? m.labels.tags.map((t) => <span class="tag">{t}</span>) : undefined}</Fact>
            <Fact name="Enrolled">{formatTime(m.created_at)}</Fact>
          </dl>
        </section>

        {can("agent_keys:read") && (
          <section class="card" aria-label="Agent keys">
            <h2>Agent keys</h2>
            {keys.error !== null && <ErrorBox error={keys.error} retry={keys.reload} />}
            {keys.data === null && keys.error === null && <Loading what="keys" />}
            {keys.data && keys.data.keys.length === 0 && <Empty>No agent keys.</Empty>}
            {keys.data && keys.data.keys.length > 0 && (
              <table class="list compact" aria-label="Keys">
                <thead><tr><th>Prefix</th><th>Created</th><th>Last used</th><th>State</th></tr></thead>
                <tbody>
                  {keys.data.keys.map((k) => (
                    <tr key={k.id}>
                      <td><code>{k.prefix}…</code></td>
                      <td>{formatTime(k.created_at)}</td>
                      <td>{formatTime(k.last_used_at)}</td>
                      <td>{k.revoked_at ? <span class="badge">revoked {formatTime(k.revoked_at)}</span> : "active"}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </section>
        )}
      </div>

      {can("sessions:read") && (
        <section class="card wide-card" aria-label="Sessions">
          <h2>Sessions</h2>
          {sessions.error !== null && <ErrorBox error={sessions.error} retry={sessions.reload} />}
          {sessions.data === null && sessions.error === null && <Loading what="sessions" />}
          {sessions.data && sessions.data.sessions.length === 0 && <Empty>No sessions on this machine yet.</Empty>}
          {sessions.data && sessions.data.sessions.length > 0 && (
            <table class="list compact" aria-label="Machine sessions">
              <thead><tr><th>Opened</th><th>By</th><th>Kind</th><th>State</th><th>Viewers</th><th /></tr></thead>
              <tbody>
                {sessions.data.sessions.map((s) => (
                  <tr key={s.id} data-session={s.id}>
                    <td>{formatTime(s.created_at)}</td>
                    <td>{s.technician}</td>
                    <td>{s.kind.replace("_", " ")}</td>
                    <td>{s.state.replaceAll("_", " ")}{s.end_reason ? ` (${s.end_reason.replace("_", " ")})` : ""}</td>
                    <td>{s.viewers}</td>
                    <td>{s.state !== "ended" && can("sessions:write") && <Link href={`/sessions/${s.id}?access=control`}>Join</Link>}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
        </section>
      )}
    </section>
  );
}

function Fact(props: { name: string; children?: ComponentChildren }) {
  const empty = props.children === undefined || props.children === null || props.children === "";
  return (
    <>
      <dt>{props.name}</dt>
      <dd>{empty ? "—" : props.children}</dd>
    </>
  );
}
