import { useState } from "preact/hooks";
import { api, ApiError } from "../api.ts";
import { ErrorBox } from "../ui/states.tsx";

/** Password, then the authenticator code when the account has a second factor. */
export function LoginPage(props: { onSignedIn(): void }) {
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [code, setCode] = useState("");
  const [needsCode, setNeedsCode] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const second = !needsCode ? {} : /^\d{6}$/.test(code.trim()) ? { totp_code: code.trim() } : { recovery_code: code.trim() };
      await api("POST", "/api/auth/login", { username, password, ...second });
      props.onSignedIn();
    } catch (err) {
      if (err instanceof ApiError && err.code === "TOTP_REQUIRED") setNeedsCode(true);
      else setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="login">
      <form onSubmit={submit} aria-label="Sign in">
        <h1>Tether</h1>
        {!needsCode ? (
          <>
            <label>Username<input name="username" autocomplete="username" value={username} onInput={(e) => setUsername(e.currentTarget.value)} required autofocus /></label>
            <label>Password<input name="password" type="password" autocomplete="current-password" value={password} onInput={(e) => setPassword(e.currentTarget.value)} required /></label>
          </>
        ) : (
          <label>Code from your authenticator app (or a recovery code)
            <input name="code" inputMode="numeric" autocomplete="one-time-code" value={code} onInput={(e) => setCode(e.currentTarget.value)} required autofocus />
          </label>
        )}
        <button type="submit" disabled={busy}>{busy ? "Signing in…" : needsCode ? "Verify" : "Sign in"}</button>
        {error !== null && <ErrorBox error={error} />}
      </form>
    </main>
  );
}
