import { useState } from "preact/hooks";
import { api } from "../api.ts";
import { ErrorBox } from "../ui/states.tsx";

interface Started {
  secret: string;
  otpauth_uri: string;
}

/**
 * A restricted login: policy requires a second factor this account lacks, and every route but
 * /api/me, /api/me/totp* and logout answers 403 until one is confirmed. So instead of the
 * console: set one up here (secret and otpauth URI as text), confirm a code, keep the recovery
 * codes, then continue.
 */
export function EnrollTotpPage(props: { username: string; onEnrolled(): void; onSignOut(): void }) {
  const [started, setStarted] = useState<Started | null>(null);
  const [code, setCode] = useState("");
  const [recovery, setRecovery] = useState<string[] | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const run = async (action: () => Promise<void>) => {
    setBusy(true);
    setError(null);
    try {
      await action();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const start = () => run(async () => setStarted(await api<Started>("POST", "/api/me/totp")));
  const confirm = (e: Event) => {
    e.preventDefault();
    void run(async () => setRecovery((await api<{ recovery_codes: string[] }>("POST", "/api/me/totp/confirm", { code: code.trim() })).recovery_codes));
  };

  return (
    <main class="login">
      <section class="enroll-totp" aria-label="Set up a second factor">
        <h1>Set up a second factor</h1>
        <p>Your role requires a code from an authenticator app to sign in, and <strong>{props.username}</strong> has none yet. Set one up to use the console.</p>
        {recovery ? (
          <>
            <p>Done. Keep these recovery codes somewhere safe: each signs you in once without the app, and they are not shown again.</p>
            <pre aria-label="Recovery codes">{recovery.join("\n")}</pre>
            <button type="button" onClick={props.onEnrolled}>Continue</button>
          </>
        ) : !started ? (
          <button type="button" onClick={start} disabled={busy}>{busy ? "Working…" : "Set up the authenticator"}</button>
        ) : (
          <form onSubmit={confirm} aria-label="Confirm the second factor">
            <p>Add this to your authenticator app (enter the secret, or open the URI), then type the code it shows.</p>
            <p>Secret: <code aria-label="Secret">{started.secret}</code></p>
            <p>URI: <code aria-label="otpauth URI">{started.otpauth_uri}</code></p>
            <label>Code from your authenticator app
              <input name="code" inputMode="numeric" autocomplete="one-time-code" pattern="\d{6}" value={code} onInput={(e) => setCode(e.currentTarget.value)} required autofocus />
            </label>
            <button type="submit" disabled={busy}>{busy ? "Checking…" : "Confirm"}</button>
          </form>
        )}
        {error !== null && <ErrorBox error={error} />}
        <button type="button" onClick={props.onSignOut}>Sign out</button>
      </section>
    </main>
  );
}
