import { useEffect, useRef, useState } from "preact/hooks";
import { splitArgv } from "./argv.ts";
import { describe } from "./files.tsx";
import { argvProblem } from "./limits.ts";
import type { Closed, ViewerSocket } from "./socket.ts";

interface Run {
  key: number;
  argv: string[] | null; // null: another viewer's command (its argv is not sent to us)
  channel: number | null;
  out: Array<{ stream: 1 | 2; text: string }>;
  end: Closed | null;
  error: string | null;
}

const MAX_OUTPUT_PARTS = 5000;
let runKeys = 0;

/**
 * The command runner: a line split into argv like a shell would (spaces, quotes), run with
 * cmd.run, stdout and stderr streamed as they come, the exit code at the end, cancel by
 * ch.close. Commands other viewers run show up too.
 */
export function CommandRunner(props: { socket: ViewerSocket; readOnly: boolean; online: boolean }) {
  const { socket, readOnly } = props;
  const [line, setLine] = useState("");
  const [runs, setRuns] = useState<Run[]>([]);
  const [parseError, setParseError] = useState<string | null>(null);

  const patch = (key: number, f: (r: Run) => Run) => setRuns((rs) => rs.map((r) => (r.key === key ? f(r) : r)));

  const follow = (key: number, channel: number) => {
    const decoders = { 1: new TextDecoder(), 2: new TextDecoder() };
    return socket.channel(channel, {
      data: (p) => {
        const stream = p[0] === 2 ? 2 : 1;
        const text = decoders[stream].decode(p.subarray(1), { stream: true });
        if (text) patch(key, (r) => ({ ...r, out: [...r.out.slice(-MAX_OUTPUT_PARTS), { stream, text }] }));
      },
      closed: (m) => patch(key, (r) => ({ ...r, end: m })),
    });
  };

  // Commands another viewer started (term and cmd channels are announced to every viewer).
  const detachers = useRef<Array<() => void>>([]);
  useEffect(() => {
    const off = socket.on((m) => {
      if (m.t === "ch.opened" && m.type === "cmd" && !socket.mine(m.req)) {
        const key = ++runKeys;
        setRuns((rs) => [{ key, argv: null, channel: m.channel, out: [], end: null, error: null }, ...rs].slice(0, 30));
        detachers.current.push(follow(key, m.channel));
      }
    });
    return () => {
      off();
      for (const d of detachers.current) d();
    };
  }, [socket]);

  const run = async (e: Event) => {
    e.preventDefault();
    if (readOnly) return;
    let argv: string[];
    try {
      argv = splitArgv(line);
    } catch (err) {
      return setParseError((err as Error).message);
    }
    if (argv.length === 0) return setParseError("type a command to run");
    const tooBig = argvProblem(argv);
    if (tooBig) return setParseError(tooBig);
    setParseError(null);
    const key = ++runKeys;
    setRuns((rs) => [{ key, argv, channel: null, out: [], end: null, error: null }, ...rs].slice(0, 30));
    try {
      const opened = await socket.request({ t: "cmd.run", argv }, "ch.opened");
      patch(key, (r) => ({ ...r, channel: opened.channel }));
      detachers.current.push(follow(key, opened.channel));
    } catch (err) {
      patch(key, (r) => ({ ...r, error: describe(err) }));
    }
  };

  return (
    <section class="commands" aria-label="Commands">
      <form class="command-bar" onSubmit={run}>
        <input
          aria-label="Command"
          placeholder={readOnly ? "View only" : 'Command, e.g. ls -la "/var/log"'}
          value={line}
          disabled={readOnly || !props.online}
          onInput={(e) => setLine(e.currentTarget.value)}
        />
        <button type="submit" disabled={readOnly || !props.online || !line.trim()}>Run</button>
      </form>
      {parseError && <p class="state error" role="alert">{parseError}</p>}
      {runs.length === 0 && <p class="state empty">No commands yet. A command runs directly (no shell), as the agent's user, in its home directory.</p>}
      {runs.map((r) => (
        <article class="run" key={r.key} data-state={r.error ? "failed" : r.end ? "ended" : "running"}>
          <header>
            <code>{r.argv ? r.argv.map(quote).join(" ") : "(another viewer's command)"}</code>
            <span class="spacer" />
            <span class="run-status">{status(r)}</span>
            {!r.end && !r.error && r.channel !== null && !readOnly && (
              <button type="button" class="secondary small" onClick={() => socket.send({ t: "ch.close", channel: r.channel! })}>Cancel</button>
            )}
          </header>
          {r.out.length > 0 && (
            <pre class="output">{r.out.map((o, i) => <span key={i} class={o.stream === 2 ? "stderr" : undefined}>{o.text}</span>)}</pre>
          )}
        </article>
      ))}
    </section>
  );
}

function status(r: Run): string {
  if (r.error) return `failed: ${r.error}`;
  if (!r.end) return r.channel === null ? "starting…" : "running…";
  const code = r.end.exit_code;
  if (r.end.reason === "exit") return `exit code ${code ?? "— (signal)"}`;
  if (r.end.reason === "cancelled") return `cancelled${code != null ? ` (exit code ${code})` : ""}`;
  return r.end.error ? `${r.end.reason}: ${r.end.error.code} ${r.end.error.message}` : r.end.reason;
}

const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
