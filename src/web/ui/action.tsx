import type { ComponentChildren } from "preact";
import { useState } from "preact/hooks";
import { ErrorBox } from "./states.tsx";

/** A button that runs an async action, shows it is busy, and shows its error in place. */
export function ActionButton(props: { run: () => Promise<unknown>; children: ComponentChildren; class?: string; confirm?: string }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  return (
    <span class="action">
      <button type="button" class={props.class} disabled={busy} onClick={async () => {
        if (props.confirm && !confirm(props.confirm)) return;
        setBusy(true);
        setError(null);
        try {
          await props.run();
        } catch (e) {
          setError(e);
        } finally {
          setBusy(false);
        }
      }}>{busy ? "Working…" : props.children}</button>
      {error !== null && <ErrorBox error={error} />}
    </span>
  );
}

/** A form whose submit runs an async action: busy state, error in place, reset on success. */
export function ActionForm(props: { label: string; submit: string; run: (data: FormData) => Promise<unknown>; children: ComponentChildren }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  return (
    <form class="inline-form" aria-label={props.label} onSubmit={async (e) => {
      e.preventDefault();
      const form = e.currentTarget as HTMLFormElement;
      setBusy(true);
      setError(null);
      try {
        await props.run(new FormData(form));
        form.reset();
      } catch (err) {
        setError(err);
      } finally {
        setBusy(false);
      }
    }}>
      {props.children}
      <button type="submit" disabled={busy}>{busy ? "Working…" : props.submit}</button>
      {error !== null && <ErrorBox error={error} />}
    </form>
  );
}
