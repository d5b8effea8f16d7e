import { useEffect, useState } from "preact/hooks";
import { api, ApiError } from "./api.ts";
import { MachinesPage } from "./pages/machines.tsx";
import { MachinePage } from "./pages/machine.tsx";
import { Lazy } from "./ui/lazy.tsx";
import { LoginPage } from "./pages/login.tsx";
import { Link, navigate, useLocation } from "./router.tsx";
import { ErrorBox, Loading } from "./ui/states.tsx";

export interface Me {
  id: string;
  username: string;
  role: "admin" | "technician" | "auditor" | "end_user";
  permissions: string[];
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
  return (
    <div class="shell">
      <nav class="top" aria-label="Main">
        <Link href="/" class="brand">Tether</Link>
        <Link href="/">Machines</Link>
        <span class="spacer" />
        <span class="who">{me.username} ({me.role.replace("_", " ")})</span>
        <button type="button" onClick={signOut}>Sign out</button>
      </nav>
      <main>{route(path)}</main>
    </div>
  );
}

// The session page (xterm.js) and the recordings player load only when they are opened.
const sessionPage = () => import("./pages/session.tsx").then((m) => m.SessionPage);

function route(path: string) {
  if (path === "/" || path === "/machines") return <MachinesPage />;
  let m: RegExpMatchArray | null;
  if ((m = path.match(/^\/machines\/([0-9a-f-]{36})$/))) return <MachinePage id={m[1]!} />;
  if ((m = path.match(/^\/sessions\/([0-9a-f-]{36})$/))) return <Lazy load={sessionPage} props={{ id: m[1]! }} />;
  return <p class="state empty">There is no page at {path}. <Link href="/">Back to the machines</Link></p>;
}
