/**
 * The viewer's one way to the server: same-origin fetch with the HttpOnly session cookie (the
 * page never holds a token), JSON in and out, and errors carrying the server's code and
 * correlation id so every error state can show it.
 */
export class ApiError extends Error {
  constructor(readonly status: number, readonly code: string, detail: string, readonly correlationId: string | null) {
    super(detail);
  }
}

export async function api<T = any>(method: string, path: string, body?: unknown): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body === undefined ? {} : { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, "NETWORK", "the server cannot be reached", null);
  }
  const text = await res.text();
  const data = text ? safeJson(text) : null;
  if (!res.ok) {
    const e = (data ?? {}) as { error_code?: string; detail?: string; correlation_id?: string };
    throw new ApiError(res.status, e.error_code ?? `HTTP_${res.status}`, e.detail ?? res.statusText, e.correlation_id ?? res.headers.get("x-correlation-id"));
  }
  return data as T;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
