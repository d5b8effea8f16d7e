import { useState } from "preact/hooks";
import { api } from "../../api.ts";
import { ActionButton, ActionForm } from "../../ui/action.tsx";
import { Empty, ErrorBox, Loading } from "../../ui/states.tsx";
import { useApi } from "../../use-api.ts";

interface Site {
  id: string;
  site_code: string;
  display_name: string;
  company: string;
  enrollment_key: { fingerprint_label: string; created_at: string } | null;
  install_command: string;
}
interface Rotated {
  site_id: string;
  key: string;
  fingerprint_label: string;
  install_command: string;
}

/** Sites and their enrollment keys: rotate one and see the key once, with its install command. */
export function SitesPage() {
  const sites = useApi<{ sites: Site[] }>("/api/sites");
  const [rotated, setRotated] = useState<Rotated | null>(null);
  return (
    <section>
      <h1>Sites</h1>
      <ActionForm label="New site" submit="Create site" run={async (f) => {
        await api("POST", "/api/sites", { site_code: f.get("site_code"), display_name: f.get("display_name"), company: f.get("company") });
        sites.reload();
      }}>
        <input name="site_code" aria-label="Site code" placeholder="Code (e.g. HQ-1)" required />
        <input name="display_name" aria-label="Site name" placeholder="Name" required />
        <input name="company" aria-label="Company" placeholder="Company" />
      </ActionForm>
      {rotated && (
        <div class="secret" role="status" aria-label="New enrollment key">
          <p>New key <strong>{rotated.fingerprint_label}</strong>. It is shown only now: copy the install command.</p>
          <pre><code>{rotated.install_command}</code></pre>
          <button type="button" onClick={() => setRotated(null)}>Done</button>
        </div>
      )}
      {sites.error !== null && <ErrorBox error={sites.error} retry={sites.reload} />}
      {!sites.data && sites.error === null && <Loading what="sites" />}
      {sites.data?.sites.length === 0 && <Empty>No sites yet.</Empty>}
      {sites.data && sites.data.sites.length > 0 && (
        <table class="list" aria-label="Sites">
          <thead><tr><th>Code</th><th>Name</th><th class="wide">Company</th><th>Enrollment key</th><th /></tr></thead>
          <tbody>
            {sites.data.sites.map((s) => (
              <tr key={s.id}>
                <td>{s.site_code}</td>
                <td>{s.display_name}</td>
                <td class="wide">{s.company || "—"}</td>
                <td data-fingerprint={s.enrollment_key?.fingerprint_label ?? ""}>{s.enrollment_key?.fingerprint_label ?? "none yet"}</td>
                <td><ActionButton confirm={s.enrollment_key ? "Rotate the key? Agents not yet enrolled with the old key will need the new one." : undefined} run={async () => {
                  setRotated(await api<Rotated>("POST", `/api/sites/${s.id}/enrollment-key/rotate`));
                  sites.reload();
                }}>Rotate key</ActionButton></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
