import { FitAddon } from "@xterm/addon-fit";
import { Terminal } from "@xterm/xterm";
import "@xterm/xterm/css/xterm.css";
import { useEffect, useRef, useState } from "preact/hooks";
import { utf8Pieces } from "./limits.ts";
import { terminalLinks } from "./links.ts";
import type { Closed, ViewerSocket } from "./socket.ts";

export interface TermTab {
  /** Stable key of the tab. */
  key: string;
  /** The channel, once open (null: this tab is asking for one). */
  channel: number | null;
  /** Opened by this viewer: it sends the size. */
  mine: boolean;
  ended: Closed | null;
  error: string | null;
}

/**
 * One terminal tab: xterm.js sized by the fit addon. A new tab asks for a terminal with the
 * size that fits (term.open) and resizes it with the window (term.resize); a tab of another
 * viewer's terminal only shows it. Typed keys go out as data frames unless `readOnly`.
 */
export function TerminalView(props: {
  socket: ViewerSocket;
  tab: TermTab;
  active: boolean;
  readOnly: boolean;
  onOpened(channel: number): void;
  onFailed(message: string): void;
  onEnded(m: Closed): void;
}) {
  const box = useRef<HTMLDivElement>(null);
  const term = useRef<{ term: Terminal; fit: FitAddon } | null>(null);
  const channel = useRef<number | null>(props.tab.channel);
  const [ready, setReady] = useState(false);
  const { socket, readOnly } = props;
  const latest = useRef(props);
  latest.current = props;

  // The terminal itself, for the life of the tab.
  useEffect(() => {
    const t = new Terminal({
      cursorBlink: true,
      disableStdin: readOnly,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
      fontSize: 14,
      scrollback: 5000,
      linkHandler: terminalLinks,
      theme: { background: "#11151c", foreground: "#e6e9ef", cursor: "#e6e9ef" },
    });
    const fit = new FitAddon();
    t.loadAddon(fit);
    t.open(box.current!);
    term.current = { term: t, fit };
    const input = t.onData((d) => {
      if (readOnly || channel.current === null) return;
      // A paste can be larger than a viewer frame may be (the server closes on one over 64 KiB).
      for (const piece of utf8Pieces(d)) socket.data(channel.current, piece);
    });
    setReady(true);
    return () => {
      input.dispose();
      t.dispose();
      term.current = null;
    };
  }, []);

  // Attach to the channel, asking for one first when this is a new tab.
  useEffect(() => {
    if (!ready || !term.current) return;
    const t = term.current;
    let detach = () => {};
    let live = true;
    const attach = (ch: number) => {
      channel.current = ch;
      detach = socket.channel(ch, {
        data: (p) => t.term.write(p.slice()),
        closed: (m) => {
          t.term.write(`\r\n\x1b[2m[${m.reason === "exit" ? `exited${m.exit_code != null ? ` with code ${m.exit_code}` : ""}` : m.reason}]\x1b[0m\r\n`);
          latest.current.onEnded(m);
        },
      });
    };
    if (props.tab.channel !== null) attach(props.tab.channel);
    else {
      const dims = t.fit.proposeDimensions();
      const cols = Math.max(2, Math.min(1000, dims?.cols || 80));
      const rows = Math.max(1, Math.min(1000, dims?.rows || 24));
      t.term.resize(cols, rows);
      socket.request({ t: "term.open", cols, rows }, "ch.opened").then(
        (m) => {
          if (!live) return socket.send({ t: "ch.close", channel: m.channel });
          attach(m.channel);
          latest.current.onOpened(m.channel);
        },
        (e: Error) => live && latest.current.onFailed(e.message),
      );
    }
    return () => {
      live = false;
      detach();
    };
  }, [ready]);

  // Fit to the box when shown and whenever it changes size (the window resizing); the viewer who opened the terminal sizes the PTY.
  useEffect(() => {
    if (!ready || !props.active || !term.current) return;
    const t = term.current;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const refit = () => {
      const dims = t.fit.proposeDimensions();
      if (!dims || !dims.cols || !dims.rows) return;
      if (dims.cols === t.term.cols && dims.rows === t.term.rows) return;
      t.term.resize(dims.cols, dims.rows);
      clearTimeout(timer);
      timer = setTimeout(() => {
        if (props.tab.mine && !readOnly && channel.current !== null) socket.send({ t: "term.resize", channel: channel.current, cols: t.term.cols, rows: t.term.rows });
      }, 100);
    };
    refit();
    t.term.focus();
    const ro = new ResizeObserver(refit);
    ro.observe(box.current!);
    return () => {
      ro.disconnect();
      clearTimeout(timer);
    };
  }, [ready, props.active]);

  return (
    <div class="term-pane" hidden={!props.active}>
      {props.tab.error && <p class="state error" role="alert">The terminal could not be opened: {props.tab.error}</p>}
      <div class="term-box" ref={box} data-channel={props.tab.channel ?? ""} aria-label="Terminal" />
    </div>
  );
}
