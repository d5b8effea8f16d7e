import { useEffect, useRef, useState } from "preact/hooks";
import { api, ApiError } from "../api.ts";
import type { Me } from "../app.tsx";
import { Link, useLocation } from "../router.tsx";
import { CommandRunner } from "../session/commands.tsx";
import { FileBrowser } from "../session/files.tsx";
import { CLOSE_SESSION_ENDED, sameOriginSocketUrl, ViewerSocket, type Access, type Closed, type SessionSnapshot } from "../session/socket.ts";
import { TerminalView, type TermTab } from "../session/terminal.tsx";
import { useApi } from "../use-api.ts";
import { formatTime } from "../ui/format.ts";
import { ErrorBox, Loading } from "../ui/states.tsx";

interface SessionRow {
  id: string;
  kind: string;
  machine_id: string | null;
  hostname: string | null;
  technician: string;
  state: string;
  end_reason: string | null;
}

const STATE_TEXT: Record<string, string> = {
  waiting_for_agent: "waiting for the agent",
  awaiting_consent: "waiting for consent",
  active: "active",
  agent_lost: "agent lost (reconnecting)",
  ended: "ended",
};

/**
 * The session page: a short-lived viewer token (POST /api/sessions/:id/viewer-token, access
 * from ?access=, control by default), the viewer socket, and on it terminals, files,
 * commands, the chat, who is connected, the session's state and ending it. Loaded lazily:
 * xterm.js is in this page's chunk only.
 */
export function SessionPage(props: { id: string }) {
  const { query } = useLocation();
  const access: Access = query.get("access") === "view" ? "view" : "control";
  const info = useApi<SessionRow>(`/api/sessions/${props.id}`);
  const me = useApi<Me>("/api/me");
  const [attempt, setAttempt] = useState(0);
  const [socket, setSocket] = useState<ViewerSocket | null>(null);
  const [error, setError] = useState<unknown>(null);
  // Failed connection attempts in a row: the server restarting or a standby taking over
  // (P10) is waited out with capped, jittered backoff, without the technician doing anything.
  const failures = useRef(0);
  const retry = () => setAttempt((n) => n + 1);
  const retryLater = () => {
    const ceiling = Math.min(10_000, 500 * 2 ** failures.current++);
    const t = setTimeout(retry, ceiling / 2 + Math.random() * (ceiling / 2));
    return () => clearTimeout(t);
  };

  useEffect(() => {
    let live = true;
    let s: ViewerSocket | null = null;
    let cancelRetry = () => {};
    let stable: ReturnType<typeof setTimeout> | undefined;
    setSocket(null);
    setError(null);
    api<{ url: string }>("POST", `/api/sessions/${props.id}/viewer-token`, { access })
      .then(async (minted) => {
        if (!live) return;
        s = new ViewerSocket(sameOriginSocketUrl(minted.url, location));
        await s.ready;
        if (!live) return;
        // Only a connection that stays up counts as recovered: a server that accepts and
        // closes at once would otherwise be retried every half second forever.
        const up = s;
        stable = setTimeout(() => {
          if (up.open) failures.current = 0;
        }, STABLE_AFTER_MS);
        setSocket(s);
      })
      .catch((e) => {
        if (!live) return;
        setError(e);
        // Unreachable, or a standby answering 503: try again by itself.
        if (!(e instanceof ApiError) || e.status === 0 || e.status >= 500) cancelRetry = retryLater();
      });

    return () => {
      live = false;
      cancelRetry();
      clearTimeout(stable);
      s?.close();
    };
  }, [props.id, access, attempt]);

  const row = info.data;
  return (
    <section class="session-page">
      <header class="page-head">
        <div>
          <h1>{row?.hostname ?? "Session"}</h1>
          <p class="sub">
            {row?.machine_id && <><Link href={`/machines/${row.machine_id}`}>Machine</Link> · </>}
            Session <code>{props.id.slice(0, 8)}</code>{row && <> · opened by {row.technician}</>}
            {me.data?.permissions.includes("recordings:read") && <>{" · "}<Link href={`/recordings?session=${props.id}`}>Recordings</Link></>}
          </p>
        </div>
      </header>
      {error !== null && <ErrorBox error={error} retry={retry} />}
      {error === null && !socket && <Loading what="the session" />}
      {socket && <SessionView key={attempt} socket={socket} sessionId={props.id} machineId={row?.machine_id ?? null} reconnect={retry} reconnectLater={retryLater} />}
    </section>
  );
}

/** How long a viewer socket must stay open before its reconnect backoff starts over. */
const STABLE_AFTER_MS = 5_000;

type Panel = "terminals" | "files" | "commands";
let tabKeys = 0;

function useSnapshot(socket: ViewerSocket): SessionSnapshot {
  const [snap, setSnap] = useState(socket.snapshot);
  useEffect(() => {
    setSnap(socket.snapshot);
    return socket.on(() => setSnap(socket.snapshot));
  }, [socket]);
  return snap;
}

function SessionView(props: { socket: ViewerSocket; sessionId: string; machineId: string | null; reconnect(): void; reconnectLater(): () => void }) {
  const { socket } = props;
  const snap = useSnapshot(socket);
  const [closed, setClosed] = useState(socket.closeInfo);
  const [panel, setPanel] = useState<Panel>("terminals");
  const [tabs, setTabs] = useState<TermTab[]>([]);
  const [active, setActive] = useState<string | null>(null);
  const [ending, setEnding] = useState(false);
  const autoOpened = useRef(false);

  useEffect(() => socket.onClose(setClosed), [socket]);

  const joined = snap.joined;
  const ended = snap.state === "ended" || closed?.code === CLOSE_SESSION_ENDED;
  // A dropped socket (the server restarted, a standby took over, this viewer fell behind) comes
  // back by itself; the session's channels are listed again by the server on join.
  useEffect(() => (closed && !ended ? props.reconnectLater() : undefined), [closed, ended]);
  const connected = closed === null && !ended;
  const readOnly = !joined || joined.access !== "control" || !connected;
  const online = connected && snap.state === "active";

  // Terminals that exist already, and those other viewers open: a tab each.
  useEffect(() => {
    if (!joined) return;
    const existing = joined.channels.filter((c) => c.type === "term").map((c) => ({ key: `t${++tabKeys}`, channel: c.channel, mine: false, ended: null, error: null }));
    setTabs((ts) => [...ts, ...existing.filter((e) => !ts.some((t) => t.channel === e.channel))]);
    if (existing[0]) setActive((a) => a ?? existing[0]!.key);
    return socket.on((m) => {
      if (m.t === "ch.opened" && m.type === "term" && !socket.mine(m.req)) {
        const key = `t${++tabKeys}`;
        setTabs((ts) => (ts.some((t) => t.channel === m.channel) ? ts : [...ts, { key, channel: m.channel, mine: false, ended: null, error: null }]));
        setActive((a) => a ?? key);
      }
    });
  }, [joined]);

  const newTerminal = () => {
    const key = `t${++tabKeys}`;
    setTabs((ts) => [...ts, { key, channel: null, mine: true, ended: null, error: null }]);
    setActive(key);
    setPanel("terminals");
  };
  // A controlling viewer gets a terminal at once when there is none yet.
  useEffect(() => {
    if (autoOpened.current || readOnly || !online || !joined) return;
    autoOpened.current = true;
    if (!joined.channels.some((c) => c.type === "term")) newTerminal();
  }, [readOnly, online, joined]);

  const patchTab = (key: string, patch: Partial<TermTab>) => setTabs((ts) => ts.map((t) => (t.key === key ? { ...t, ...patch } : t)));
  const closeTab = (tab: TermTab) => {
    if (!readOnly && tab.channel !== null && !tab.ended) socket.send({ t: "ch.close", channel: tab.channel });
    const rest = tabs.filter((t) => t.key !== tab.key);
    setTabs(rest);
    if (active === tab.key) setActive(rest.at(-1)?.key ?? null);
  };

  const end = () => {
    setEnding(true);
    socket.send({ t: "session.end" });
  };

  return (
    <div class="session">
      <div class="session-bar">
        <span class={`session-state ${snap.state ?? "connecting"}`} role="status" aria-label="Session state">
          {ended ? `ended${snap.reason ? ` (${snap.reason.replace("_", " ")})` : ""}` : STATE_TEXT[snap.state ?? ""] ?? "connecting…"}
        </span>
        {joined && <span class={`badge access ${joined.access}`}>{joined.access === "control" ? "in control" : "view only"}</span>}
        <span class="spacer" />
        {!ended && (
          <button type="button" class="danger" disabled={readOnly || ending} onClick={end}>{ending ? "Ending…" : "End session"}</button>
        )}
      </div>
      {ended && (
        <div class="state notice" role="alert">
          The session has ended{snap.reason ? `: ${snap.reason.replace("_", " ")}` : ""}.{" "}
          {props.machineId && <Link href={`/machines/${props.machineId}`}>Back to the machine</Link>}
        </div>
      )}
      {!ended && closed && (
        <div class="state error" role="alert">
          Disconnected from the session ({closed.code}{closed.reason ? `: ${closed.reason}` : ""}); reconnecting…{" "}
          <button type="button" onClick={props.reconnect}>Reconnect now</button>
        </div>
      )}
      <div class="session-grid">
        <div class="work">
          <div class="panel-tabs" role="tablist" aria-label="Tools">
            {(["terminals", "files", "commands"] as const).map((p) => (
              <button type="button" role="tab" aria-selected={panel === p} class={panel === p ? "tab active" : "tab"} onClick={() => setPanel(p)}>
                {p === "terminals" ? "Terminal" : p === "files" ? "Files" : "Commands"}
              </button>
            ))}
          </div>
          <div class="panel" hidden={panel !== "terminals"}>
            <div class="term-tabs" role="tablist" aria-label="Terminals">
              {tabs.map((t, i) => (
                <span class={`term-tab${t.key === active ? " active" : ""}${t.ended ? " ended" : ""}`} key={t.key}>
                  <button type="button" role="tab" aria-selected={t.key === active} class="tab" onClick={() => setActive(t.key)}>
                    Terminal {i + 1}{t.mine ? "" : " (shared)"}{t.ended ? " — ended" : ""}
                  </button>
                  <button type="button" class="close" aria-label={`Close terminal ${i + 1}`} onClick={() => closeTab(t)}>×</button>
                </span>
              ))}
              <button type="button" class="secondary small" disabled={readOnly || !online} onClick={newTerminal}>+ New terminal</button>
            </div>
            {tabs.length === 0 && <p class="state empty">{readOnly ? "No terminal is open. A viewer in control can open one." : online ? "No terminal open." : "Terminals open once the agent is connected."}</p>}
            {tabs.map((t) => (
              <TerminalView
                key={t.key}
                socket={socket}
                tab={t}
                active={panel === "terminals" && t.key === active}
                readOnly={readOnly}
                onOpened={(channel) => patchTab(t.key, { channel })}
                onFailed={(error) => patchTab(t.key, { error })}
                onEnded={(m: Closed) => patchTab(t.key, { ended: m })}
              />
            ))}
          </div>
          <div class="panel" hidden={panel !== "files"}>
            <FileBrowser socket={socket} readOnly={readOnly} online={online} />
          </div>
          <div class="panel" hidden={panel !== "commands"}>
            <CommandRunner socket={socket} readOnly={readOnly} online={online} />
          </div>
        </div>
        <aside class="side">
          <People snap={snap} />
          <Chat socket={socket} snap={snap} readOnly={readOnly} />
        </aside>
      </div>
    </div>
  );
}

function People(props: { snap: SessionSnapshot }) {
  const me = props.snap.joined?.viewer_id;
  return (
    <section class="card people" aria-label="People connected">
      <h2>Connected</h2>
      {props.snap.viewers.length === 0 ? (
        <p class="state empty">Nobody yet.</p>
      ) : (
        <ul>
          {props.snap.viewers.map((v) => (
            <li key={v.viewer_id}>
              <span class="name">{v.name}{v.viewer_id === me ? " (you)" : ""}</span>
              <span class={`badge access ${v.access}`}>{v.access === "control" ? "control" : "view"}</span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function Chat(props: { socket: ViewerSocket; snap: SessionSnapshot; readOnly: boolean }) {
  const [text, setText] = useState("");
  const list = useRef<HTMLOListElement>(null);
  const messages = props.snap.chat;
  // The last message, not the count: the count stays at 500 once the oldest are trimmed.
  const last = messages.at(-1);
  useEffect(() => {
    if (list.current) list.current.scrollTop = list.current.scrollHeight;
  }, [last?.id ?? last]);
  const send = (e: Event) => {
    e.preventDefault();
    const t = text.trim();
    if (!t || props.readOnly) return;
    props.socket.send({ t: "chat.send", text: t.slice(0, 4096) });
    setText("");
  };
  return (
    <section class="card chat" aria-label="Chat">
      <h2>Chat</h2>
      {messages.length === 0 ? (
        <p class="state empty">No messages. The person at the machine sees what you write here.</p>
      ) : (
        <ol class="messages" ref={list}>
          {messages.map((m, i) => (
            <li key={m.id ?? i} class={m.role}>
              <span class="from">{m.from}</span> <time>{formatTime(m.at)}</time>
              <p>{m.text}</p>
            </li>
          ))}
        </ol>
      )}
      <form class="chat-form" onSubmit={send}>
        <input aria-label="Chat message" placeholder={props.readOnly ? "View only" : "Write a message"} value={text} disabled={props.readOnly} onInput={(e) => setText(e.currentTarget.value)} />
        <button type="submit" disabled={props.readOnly || !text.trim()}>Send</button>
      </form>
    </section>
  );
}
