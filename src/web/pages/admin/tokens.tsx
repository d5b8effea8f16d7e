import { useState } from "preact/hooks";
import { api } from "../../api.ts";
import { ActionButton, ActionForm } from "../../ui/action.tsx";
import { Empty, ErrorBox, Loading } from "../../ui/states.tsx";
import { useApi } from "../../use-api.ts";

interface Token {
  id: string;
  name: string;
  prefix: string;
  scopes: string[];
  expires_at: string;
  last_used_at?: string | null;
}

/** The caller's API tokens: mint one (shown once), list, revoke. */
export function TokensPage(props: { permissions: string[] }) {
  const tokens = useApi<{ tokens: Token[] }>("/api/tokens");
  const [minted, setMinted] = useState<string | null>(null);
  return (
    <section>
      <h1>API tokens</h1>
      <ActionForm label="New API token" submit="Create token" run={async (f) => {
        const scopes = f.getAll("scope").map(String);
        const days = Number(f.get("days") ?? 30);
        const r = await api<{ token: string }>("POST", "/api/tokens", { name: f.get("name"), scopes, expires_at: new Date(Date.now() + days * 86_400_000).toISOString() });
        setMinted(r.token);
        tokens.reload();
      }}>
        <input name="name" aria-label="Token name" placeholder="What it is for" required />
        <select name="days" aria-label="Expires in"><option value="30">30 days</option><option value="90">90 days</option><option value="365">1 year</option></select>
        <fieldset class="scopes"><legend>Scopes</legend>
          {props.permissions.map((p) => <label><input type="checkbox" name="scope" value={p} /> {p}</label>)}
        </fieldset>
      </ActionForm>
      {minted && (
        <div class="secret" role="status" aria-label="New API token">
          <p>The token is shown only now:</p>
          <pre><code>{minted}</code></pre>
          <button type="button" onClick={() => setMinted(null)}>Done</button>
        </div>
      )}
      {tokens.error !== null && <ErrorBox error={tokens.error} retry={tokens.reload} />}
      {!tokens.data && tokens.error === null && <Loading what="tokens" />}
      {tokens.data?.tokens.length === 0 && <Empty>No API tokens.</Empty>}
      {tokens.data && tokens.data.tokens.length > 0 && (
        <table class="list" aria-label="API tokens">
          <thead><tr><th>Name</th><th>Prefix</th><th class="wide">Scopes</th><th>Expires</th><th /></tr></thead>
          <tbody>
            {tokens.data.tokens.map((t) => (
              <tr key={t.id}>
                <td>{t.name}</td>
                <td><code>{t.prefix}</code></td>
                <td class="wide">{t.scopes.join(", ")}</td>
                <td>{new Date(t.expires_at).toLocaleDateString()}</td>
                <td><ActionButton confirm="Revoke this token? Anything using it stops working." run={async () => {
                  await api("DELETE", `/api/tokens/${t.id}`);
                  tokens.reload();
                }}>Revoke</ActionButton></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
