import { api } from "../../api.ts";
import { ActionButton } from "../../ui/action.tsx";
import { Empty, ErrorBox, Loading } from "../../ui/states.tsx";
import { useApi } from "../../use-api.ts";

/** Machines waiting for approval (a clone-looking enrollment): approve or reject each. */
export function PendingPage() {
  const list = useApi<{ machines: Array<{ id: string; hostname: string; site_code: string | null; created_at: string }> }>("/api/machines?enrollment_state=pending&limit=200", 5_000);
  const decide = async (id: string, what: "approve" | "reject") => {
    await api("POST", `/api/machines/${id}/${what}`);
    list.reload();
  };
  return (
    <section>
      <h1>Pending machines</h1>
      {list.error !== null && <ErrorBox error={list.error} retry={list.reload} />}
      {!list.data && list.error === null && <Loading what="pending machines" />}
      {list.data?.machines.length === 0 && <Empty>No machine is waiting for approval.</Empty>}
      {list.data && list.data.machines.length > 0 && (
        <table class="list" aria-label="Pending machines">
          <thead><tr><th>Host</th><th>Site</th><th /></tr></thead>
          <tbody>
            {list.data.machines.map((m) => (
              <tr key={m.id}>
                <td>{m.hostname}</td>
                <td>{m.site_code ?? "—"}</td>
                <td><ActionButton run={() => decide(m.id, "approve")}>Approve</ActionButton> <ActionButton class="secondary" run={() => decide(m.id, "reject")}>Reject</ActionButton></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
