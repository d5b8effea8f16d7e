import { loadConfig } from "../../src/config.ts";
import { silentLogger } from "../../src/log.ts";
import { startServer, type RunningServer, type ServerOptions } from "../../src/server.ts";
import { createTestDb, type TestDb } from "./stores.ts";

export const ADMIN_PASSWORD = "correct horse battery staple";

export interface ApiResponse<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

/**
 * A real Tether server in this process, on a loopback port, over a fresh TestDb, with the
 * first admin's password known. `call` speaks HTTP to it like any client.
 */
export interface TestApp {
  url: string;
  server: RunningServer;
  db: TestDb;
  /** A bearer token of the first admin. */
  adminToken: string;
  call<T = any>(method: string, path: string, opts?: { token?: string; body?: unknown; headers?: Record<string, string> }): Promise<ApiResponse<T>>;
  /** Logs in and returns the session token. */
  login(username: string, password: string, extra?: Record<string, string>): Promise<string>;
  /** Creates a user (as admin) and returns its id and a session token. */
  user(role: "admin" | "technician" | "auditor" | "end_user", name?: string): Promise<{ id: string; token: string; username: string; password: string }>;
  close(): Promise<void>;
}

let counter = 0;

export async function startTestApp(flavor: "pglite" | "postgres", opts: Partial<ServerOptions> & { env?: Record<string, string> } = {}): Promise<TestApp> {
  const db = await createTestDb(flavor);
  const config = {
    ...loadConfig({ ...opts.env }),
    port: 0,
    host: "127.0.0.1",
    dataDir: db.config.dataDir,
    databaseUrl: db.config.databaseUrl ? withSearchPath(db.config.databaseUrl, db.config.searchPath) : undefined,
    adminPassword: ADMIN_PASSWORD,
  };
  const server = await startServer({ config, logger: silentLogger, ...opts });
  const url = server.url;
  const call = async <T = any,>(method: string, path: string, o: { token?: string; body?: unknown; headers?: Record<string, string> } = {}): Promise<ApiResponse<T>> => {
    const headers: Record<string, string> = { ...o.headers };
    if (o.token) headers.authorization = `Bearer ${o.token}`;
    if (o.body !== undefined) headers["content-type"] = "application/json";
    const res = await fetch(url + path, { method, headers, body: o.body === undefined ? undefined : JSON.stringify(o.body) });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {}
    return { status: res.status, body: body as T, headers: res.headers };
  };
  const login = async (username: string, password: string, extra: Record<string, string> = {}) => {
    const r = await call("POST", "/api/auth/login", { body: { username, password, ...extra } });
    if (r.status !== 200) throw new Error(`login ${username}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.token as string;
  };
  const adminToken = await login("admin", ADMIN_PASSWORD);
  return {
    url,
    server,
    db,
    adminToken,
    call,
    login,
    user: async (role, name) => {
      const username = name ?? `${role}-${++counter}-${Math.random().toString(36).slice(2, 6)}`;
      const password = `pw-${username}-long-enough`;
      const r = await call("POST", "/api/users", { token: adminToken, body: { username, role, password } });
      if (r.status !== 201) throw new Error(`create ${username}: ${r.status} ${JSON.stringify(r.body)}`);
      return { id: r.body.id, token: await login(username, password), username, password };
    },
    close: async () => {
      await server.stop();
      await db.destroy();
    },
  };
}

function withSearchPath(url: string, searchPath?: string): string {
  if (!searchPath) return url;
  const u = new URL(url);
  u.searchParams.set("search_path", searchPath);
  return u.toString();
}
