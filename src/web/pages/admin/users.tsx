import { useState } from "preact/hooks";
import { api } from "../../api.ts";
import { ActionButton, ActionForm } from "../../ui/action.tsx";
import { ErrorBox, Loading } from "../../ui/states.tsx";
import { useApi } from "../../use-api.ts";

interface User {
  id: string;
  username: string;
  display_name: string;
  role: string;
  disabled: boolean;
  totp_enabled: boolean;
}
const ROLES = ["admin", "technician", "auditor", "end_user"];

/** Users and roles: create, change a role, disable or enable. */
export function UsersPage() {
  const users = useApi<{ users: User[] }>("/api/users");
  const patch = async (id: string, body: Record<string, unknown>) => {
    await api("PATCH", `/api/users/${id}`, body);
    users.reload();
  };
  return (
    <section>
      <h1>Users</h1>
      <ActionForm label="New user" submit="Create user" run={async (f) => {
        await api("POST", "/api/users", { username: f.get("username"), password: f.get("password"), role: f.get("role") });
        users.reload();
      }}>
        <input name="username" aria-label="New username" placeholder="Username" required />
        <input name="password" aria-label="Initial password" type="password" placeholder="Initial password" required minLength={12} />
        <select name="role" aria-label="Role">{ROLES.map((r) => <option value={r}>{r.replace("_", " ")}</option>)}</select>
      </ActionForm>
      {users.error !== null && <ErrorBox error={users.error} retry={users.reload} />}
      {!users.data && users.error === null && <Loading what="users" />}
      {users.data && (
        <table class="list" aria-label="Users">
          <thead><tr><th>User</th><th>Role</th><th class="wide">Second factor</th><th>Status</th><th /></tr></thead>
          <tbody>
            {users.data.users.map((u) => (
              <tr key={u.id}>
                <td>{u.username}</td>
                <td>
                  <RoleSelect user={u} change={(role) => patch(u.id, { role })} reset={users.reload} />
                </td>
                <td class="wide">{u.totp_enabled ? "on" : "off"}</td>
                <td>{u.disabled ? "disabled" : "active"}</td>
                <td><ActionButton run={() => patch(u.id, { disabled: !u.disabled })}>{u.disabled ? "Enable" : "Disable"}</ActionButton></td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

/** A user's role: a refused change (409 LAST_ADMIN, 403) is shown in place, as ActionButton does. */
function RoleSelect(props: { user: User; change(role: string): Promise<void>; reset(): void }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const u = props.user;
  return (
    <span class="action">
      <select aria-label={`Role of ${u.username}`} value={u.role} disabled={busy} onChange={async (e) => {
        const select = e.currentTarget;
        setBusy(true);
        setError(null);
        try {
          await props.change(select.value);
        } catch (err) {
          setError(err);
          select.value = u.role; // the select shows the role the user still has
          props.reset();
        } finally {
          setBusy(false);
        }
      }}>
        {ROLES.map((r) => <option value={r}>{r.replace("_", " ")}</option>)}
      </select>
      {error !== null && <ErrorBox error={error} />}
    </span>
  );
}
