import type { ComponentChildren } from "preact";
import { ApiError } from "../api.ts";

/** The three states every page has besides its content: loading, empty, and an error with its correlation id. */
export function Loading(props: { what?: string }) {
  return <p class="state loading" role="status">Loading{props.what ? ` ${props.what}` : ""}…</p>;
}

export function Empty(props: { children: ComponentChildren }) {
  return <p class="state empty">{props.children}</p>;
}

export function ErrorBox(props: { error: unknown; retry?: () => void }) {
  const e = props.error;
  const message = e instanceof Error ? e.message : String(e);
  const id = e instanceof ApiError ? e.correlationId : null;
  return (
    <div class="state error" role="alert">
      <p>{message}</p>
      {id && <p class="correlation">Correlation id: <code>{id}</code></p>}
      {props.retry && <button type="button" onClick={props.retry}>Try again</button>}
    </div>
  );
}
