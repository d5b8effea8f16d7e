import { useEffect, useState } from "preact/hooks";
import { api, ApiError } from "./api.ts";
import { MachinesPage } from "./pages/machines.tsx";
import { MachinePage } from "./pages/machine.tsx";
import { Lazy } from "./ui/lazy.tsx";
import { RecordingsPage } from "./recordings/list.tsx";
import { SupportPage } from "./pages/support.tsx";
import { TimelinePage } from "./pages/timeline.tsx";
import { AuditPage } from "./pages/admin/audit.tsx";
import { PendingPage } from "./pages/admin/pending.tsx";
import { SitesPage } from "./pages/admin/sites.tsx";
import { TokensPage } from "./pages/admin/tokens.tsx";
import { UsersPage } from "./pages/admin/users.tsx";
import { LoginPage } from "./pages/login.tsx";
import { EnrollTotpPage } from "./pages/enroll-totp.tsx";
import { Link, navigate, useLocation } from "./router.tsx";
import { ErrorBox, Loading } from "./ui/states.tsx";

export interface Me {
  id: string;
  username: string;
  role: "admin" | "technician" | "auditor" | "end_user";
  permissions: string[];
  /** Policy requires a second factor this login lacks: only enrolling it works. */
  restricted: boolean;
}

/** Who is signed in decides what there is: the login page, or the console with its pages. */
export function App() {
  const [me, setMe] = useState<Me | null | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const load = () => {
    setError(null);
    api<Me>("GET", "/api/me").then(setMe, (e) => (e instanceof ApiError && e.status === 401 ? setMe(null) : setError(e)));
  };
  useEffect(load, []);
  const { path } = useLocation();

  if (error !== null) return <main class="centered"><ErrorBox error={error} retry={load} /></main>;
  if (me === undefined) return <main class="centered"><Loading /></main>;
  if (me === null) return <LoginPage onSignedIn={load} />;

  const signOut = async () => {
    await api("POST", "/api/auth/logout").catch(() => {});
    setMe(null);
    navigate("/");
  };
  if (me.restricted) return <EnrollTotpPage username={me.username} onEnrolled={load} onSignOut={signOut} />;
  return (
    <div class="shell">
      <nav class="top" aria-label="Main">
        <Link href="/" class="brand">Tether</Link>
        <Link href="/">Machines</Link>
        {can(me, "support_codes:write") && <Link href="/support">Support</Link>}
        {can(me, "sites:read") && <Link href="/sites">Sites</Link>}
        {can(me, "users:read") && <Link href="/users">Users</Link>}
        {can(me, "machines:write") && <Link href="/pending">Pending</Link>}
        {can(me, "audit:read") && <Link href="/audit">Audit</Link>}
        {can(me, "actors:read") && <Link href="/actors">Timeline</Link>}
        {me.role !== "end_user" && <Link href="/tokens">API tokens</Link>}
        <span class="spacer" />
        <span class="who">{me.username} ({me.role.replace("_", " ")})</span>
        <button type="button" onClick={signOut}>Sign out</button>
      </nav>
      <main>{route(path, me)}</main>
    </div>
  );
}

// The session page (xterm.js) and the recordings player load only when they are opened.
const sessionPage = () => import("./pages/session.tsx").then((m) => m.SessionPage);
const recordingPage = () => import("./recordings/player.tsx").then((m) => m.RecordingPage);

const can = (me: Me, permission: string) => me.permissions.includes(permission);

function route(path: string, me: Me) {
  let m: RegExpMatchArray | null;
  if (path === "/" || path === "/machines") return <MachinesPage />;
  if (path === "/support" && can(me, "support_codes:write")) return <SupportPage />;
  if (path === "/recordings" && can(me, "recordings:read")) return <RecordingsPage />;
  if ((m = path.match(/^\/recordings\/([0-9a-f-]{36})$/)) && can(me, "recordings:read")) return <Lazy load={recordingPage} props={{ id: m[1]! }} />;
  if (path === "/sites" && can(me, "sites:read")) return <SitesPage />;
  if (path === "/users" && can(me, "users:read")) return <UsersPage />;
  if (path === "/pending" && can(me, "machines:write")) return <PendingPage />;
  if (path === "/audit" && can(me, "audit:read")) return <AuditPage />;
  if (path === "/actors" && can(me, "actors:read")) return <TimelinePage />;
  if ((m = path.match(/^\/actors\/([a-z]+)\/([0-9a-f-]{36})$/)) && can(me, "actors:read")) return <TimelinePage kind={m[1]!} id={m[2]!} />;
  if (path === "/tokens" && me.role !== "end_user") return <TokensPage permissions={me.permissions} />;
  if ((m = path.match(/^\/machines\/([0-9a-f-]{36})$/))) return <MachinePage id={m[1]!} />;
  if ((m = path.match(/^\/sessions\/([0-9a-f-]{36})$/))) return <Lazy load={sessionPage} props={{ id: m[1]! }} />;
  return <p class="state empty">There is no page at {path}. <Link href="/">Back to the machines</Link></p>;
}
