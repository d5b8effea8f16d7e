import { useEffect, useRef, useState } from "preact/hooks";
import { ChannelError, FILE_CHUNK, TRANSFER_WINDOW, type Listing, type ViewerSocket } from "./socket.ts";
import { Empty, Loading } from "../ui/states.tsx";
import { formatBytes } from "../ui/format.ts";
import { pathProblem } from "./limits.ts";

type Entry = Listing["entries"][number];

interface Transfer {
  id: number;
  kind: "upload" | "download";
  name: string;
  size: number;
  done: number;
  state: "running" | "done" | "failed" | "cancelled";
  error?: string;
  channel: number | null;
}

/** Acknowledge a download's bytes at least this often (well inside the window, so the agent never waits). */
const ACK_EVERY = TRANSFER_WINDOW / 4;
let transferIds = 0;

const parentOf = (path: string) => (path === "/" ? "/" : path.replace(/\/[^/]+\/?$/, "") || "/");
const join = (dir: string, name: string) => (dir.endsWith("/") ? dir + name : `${dir}/${name}`);

/**
 * The file browser: a directory listing (files.list) to navigate, downloads acknowledged
 * within the transfer window and saved through a Blob, uploads from a file picker sent in
 * FILE_CHUNK frames never more than TRANSFER_WINDOW ahead of the agent's acks, with progress.
 */
export function FileBrowser(props: { socket: ViewerSocket; readOnly: boolean; online: boolean }) {
  const { socket, readOnly } = props;
  const [path, setPath] = useState("~");
  const [typed, setTyped] = useState("~");
  const [listing, setListing] = useState<Listing | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [loading, setLoading] = useState(false);
  const [transfers, setTransfers] = useState<Transfer[]>([]);
  const fileInput = useRef<HTMLInputElement>(null);
  const cancels = useRef(new Map<number, () => void>());
  // Read after an await: the directory last asked for (shown, or on its way), and which
  // listing is the latest (a slow one answered after a newer one must not replace it).
  const wanted = useRef(path);
  const listings = useRef(0);

  const list = async (to: string) => {
    if (readOnly) return;
    const problem = pathProblem(to);
    if (problem) return setError(problem);
    const seq = ++listings.current;
    wanted.current = to;
    setLoading(true);
    setError(null);
    try {
      const l = await socket.request({ t: "files.list", path: to }, "files.listing");
      if (seq !== listings.current) return;
      wanted.current = l.path;
      setListing(l);
      setPath(l.path);
      setTyped(l.path);
    } catch (e) {
      if (seq !== listings.current) return;
      wanted.current = path; // still showing the one before
      setError(describe(e));
    } finally {
      if (seq === listings.current) setLoading(false);
    }
  };
  useEffect(() => {
    if (props.online) void list(path);
  }, [props.online]);

  const update = (id: number, patch: Partial<Transfer>) => setTransfers((ts) => ts.map((t) => (t.id === id ? { ...t, ...patch } : t)));

  const download = async (entry: Entry) => {
    const id = ++transferIds;
    setTransfers((ts) => [{ id, kind: "download" as const, name: entry.name, size: entry.size, done: 0, state: "running" as const, channel: null }, ...ts].slice(0, 20));
    try {
      const opened = await socket.request({ t: "files.download", path: checked(join(path, entry.name)) }, "ch.opened");
      const ch = opened.channel;
      const chunks: Uint8Array[] = [];
      let received = 0;
      let acked = 0;
      let lastShown = 0;
      update(id, { channel: ch, size: opened.size ?? entry.size });
      cancels.current.set(id, () => socket.send({ t: "ch.close", channel: ch }));
      await new Promise<void>((resolve, reject) => {
        const detach = socket.channel(ch, {
          data: (p) => {
            chunks.push(p.slice());
            received += p.byteLength;
            if (received - acked >= ACK_EVERY) socket.send({ t: "ch.ack", channel: ch, bytes: (acked = received) });
            if (received - lastShown >= 256 * 1024) update(id, { done: (lastShown = received) });
          },
          closed: (m) => {
            detach();
            if (m.reason === "eof") resolve();
            else reject(new ChannelError(m.error?.code ?? m.reason, m.error?.message ?? m.reason));
          },
        });
      });
      saveBlob(new Blob(chunks as BlobPart[]), entry.name);
      update(id, { done: received, size: received, state: "done" });
    } catch (e) {
      update(id, { state: e instanceof ChannelError && e.code === "cancelled" ? "cancelled" : "failed", error: describe(e) });
    } finally {
      cancels.current.delete(id);
    }
  };

  const upload = async (file: File) => {
    const id = ++transferIds;
    const dir = path;
    setTransfers((ts) => [{ id, kind: "upload" as const, name: file.name, size: file.size, done: 0, state: "running" as const, channel: null }, ...ts].slice(0, 20));
    try {
      const opened = await socket.request({ t: "files.upload", path: checked(join(dir, file.name)), size: file.size }, "ch.opened");
      const ch = opened.channel;
      update(id, { channel: ch });
      let acked = 0;
      let wake: (() => void) | null = null;
      let end: { ok: boolean; error?: string } | null = null;
      const detach = socket.channel(ch, {
        ack: (bytes) => {
          acked = Math.max(acked, bytes);
          update(id, { done: acked });
          wake?.();
        },
        closed: (m) => {
          end = m.reason === "eof" ? { ok: true } : { ok: false, error: m.error ? `${m.error.code}: ${m.error.message}` : m.reason };
          wake?.();
        },
      });
      cancels.current.set(id, () => socket.send({ t: "ch.close", channel: ch }));
      const waitFor = async (cond: () => boolean) => {
        while (!cond() && end === null) {
          if (!socket.open) throw new ChannelError("DISCONNECTED", "the viewer socket closed");
          await new Promise<void>((r) => {
            wake = r;
            setTimeout(r, 500);
          });
          wake = null;
        }
      };
      try {
        for (let sent = 0; sent < file.size && end === null; ) {
          const chunk = new Uint8Array(await file.slice(sent, Math.min(file.size, sent + FILE_CHUNK)).arrayBuffer());
          await waitFor(() => sent + chunk.byteLength - acked <= TRANSFER_WINDOW);
          if (end !== null) break;
          socket.data(ch, chunk);
          sent += chunk.byteLength;
        }
        if (end === null) socket.send({ t: "ch.eof", channel: ch });
        await waitFor(() => false);
      } finally {
        detach();
      }
      const result = end as { ok: boolean; error?: string } | null;
      if (!result?.ok) throw new Error(result?.error ?? "the upload did not finish");
      update(id, { done: file.size, state: "done" });
      // List its folder again only if the browser is still there (not moved on meanwhile).
      if (dir === wanted.current) void list(dir);
    } catch (e) {
      update(id, { state: /cancelled/.test(describe(e)) ? "cancelled" : "failed", error: describe(e) });
    } finally {
      cancels.current.delete(id);
    }
  };

  const entries = listing?.entries ?? [];
  const dirs = entries.filter((e) => e.type === "dir");
  const rest = entries.filter((e) => e.type !== "dir");
  return (
    <section class="files" aria-label="Files">
      <form
        class="path-bar"
        onSubmit={(e) => {
          e.preventDefault();
          void list(typed.trim() || "~");
        }}
      >
        <button type="button" class="secondary" disabled={readOnly || path === "/"} onClick={() => list(parentOf(path))} aria-label="Up one directory">↑ Up</button>
        <input aria-label="Path" value={typed} disabled={readOnly} onInput={(e) => setTyped(e.currentTarget.value)} />
        <button type="submit" class="secondary" disabled={readOnly}>Go</button>
        <label class={`button upload-button${readOnly ? " disabled" : ""}`}>
          Upload…
          <input
            ref={fileInput}
            type="file"
            aria-label="Upload a file"
            disabled={readOnly || !listing}
            onChange={(e) => {
              const files = [...(e.currentTarget.files ?? [])];
              e.currentTarget.value = "";
              for (const f of files) void upload(f);
            }}
          />
        </label>
      </form>
      {readOnly && <Empty>View only: the file browser is for viewers in control.</Empty>}
      {transfers.length > 0 && (
        <ul class="transfers" aria-label="Transfers">
          {transfers.map((t) => (
            <li key={t.id} data-state={t.state}>
              <span class="transfer-name">{t.kind === "upload" ? "↑" : "↓"} {t.name}</span>
              <progress max={Math.max(1, t.size)} value={t.done} aria-label={`${t.kind} ${t.name}`} />
              <span class="transfer-state">
                {t.state === "running" ? `${formatBytes(t.done)} / ${formatBytes(t.size)}` : t.state === "done" ? `${t.kind === "upload" ? "uploaded" : "downloaded"} ${formatBytes(t.size)}` : `${t.state}${t.error ? `: ${t.error}` : ""}`}
              </span>
              {t.state === "running" && t.channel !== null && <button type="button" class="link" onClick={() => cancels.current.get(t.id)?.()}>Cancel</button>}
            </li>
          ))}
        </ul>
      )}
      {error && <p class="state error" role="alert">{error}</p>}
      {loading && !listing && <Loading what="the directory" />}
      {listing && entries.length === 0 && <Empty>This directory is empty.</Empty>}
      {listing && entries.length > 0 && (
        <table class="list compact" aria-label="Directory">
          <thead>
            <tr><th>Name</th><th>Size</th><th class="wide">Modified</th><th /></tr>
          </thead>
          <tbody>
            {[...dirs, ...rest].map((e) => (
              <tr key={e.name} data-name={e.name}>
                <td>
                  {e.type === "dir" ? (
                    <button type="button" class="link" onClick={() => list(join(path, e.name))}>{e.name}/</button>
                  ) : (
                    <span>{e.name}{e.type === "link" ? " →" : ""}</span>
                  )}
                </td>
                <td>{e.type === "file" ? formatBytes(e.size) : ""}</td>
                <td class="wide">{new Date(e.mtime).toLocaleString()}</td>
                <td>{e.type === "file" && <button type="button" class="secondary small" disabled={readOnly} onClick={() => download(e)} aria-label={`Download ${e.name}`}>Download</button>}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function saveBlob(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.hidden = true;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The path, if the server would take it; else a ChannelError, shown like the server's. */
function checked(path: string): string {
  const problem = pathProblem(path);
  if (problem) throw new ChannelError("PATH_TOO_LONG", problem);
  return path;
}

export function describe(e: unknown): string {
  if (e instanceof ChannelError) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
