import { Elysia } from "elysia";
import { monotonicFactory } from "ulid";
import { ActorError } from "../actors/errors.ts";
import type { Logger } from "../log.ts";
import { CORRELATION_HEADER, type ErrorEnvelope } from "../protocol/errors.ts";

/** What handlers throw for an expected failure; the one place below turns it into a response. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(detail);
  }
}

// Runtime errors a client can act on; anything else is a 500 with no internal text.
const ACTOR_STATUS: Record<string, number> = {
  ACTOR_MAILBOX_FULL: 503,
  ACTOR_ASK_TIMEOUT: 504,
  ACTOR_FAILED: 503,
  ACTOR_SYSTEM_STOPPED: 503,
  ACTOR_NOT_DURABLE: 503,
  ACTOR_EVENT_REJECTED: 500,
  ACTOR_UNKNOWN_KIND: 404,
};

const CORRELATION_ID = /^[A-Za-z0-9._-]{1,64}$/;
// Monotonic: the ids of one millisecond differ in their last digits instead of 16 fresh random
// characters each (a reconnect storm's 5,000 WebSocket upgrades each get one), and sort in order.
const ulid = monotonicFactory();
const started = new WeakMap<Request, number>();
// The status of a request answered by the error handler (the after-response hook cannot see it).
const failed = new WeakMap<Request, number>();

/**
 * Correlation ids and the error envelope. Every response carries `x-correlation-id` (the
 * caller's, if it sent a sane one); every error body is `{detail, error_code, status_code,
 * correlation_id}`; internal error text goes to the log, never to the client.
 */
export const errorHandling = (log: Logger) =>
  new Elysia({ name: "errors" })
    .onRequest(({ request, set }) => {
      const given = request.headers.get(CORRELATION_HEADER);
      set.headers[CORRELATION_HEADER] = given && CORRELATION_ID.test(given) ? given : ulid();
      started.set(request, performance.now());
    })
    // One access-log line per request, carrying its correlation id: debug when it went well,
    // info for a client error, error for a server error.
    .onAfterResponse({ as: "global" }, ({ request, set }) => {
      const status = failed.get(request) ?? (typeof set.status === "number" ? set.status : 200);
      const level = status >= 500 ? "error" : status >= 400 ? "info" : "debug";
      if (!log.isLevelEnabled(level)) return;
      const t0 = started.get(request);
      log[level]({ correlationId: set.headers[CORRELATION_HEADER], method: request.method, path: loggedPath(request.url), status, ms: t0 === undefined ? undefined : Math.round(performance.now() - t0) }, "request");
    })
    .onError({ as: "global" }, ({ code, error, set, request }) => {
      const correlationId = String(set.headers[CORRELATION_HEADER] ?? ulid());
      const envelope = (status: number, errorCode: string, detail: string): Response => {
        failed.set(request, status);
        const body: ErrorEnvelope = { detail, error_code: errorCode, status_code: status, correlation_id: correlationId };
        return new Response(JSON.stringify(body), {
          status,
          headers: { "content-type": "application/json", [CORRELATION_HEADER]: correlationId, ...(error instanceof HttpError ? error.headers : {}) },
        });
      };
      if (error instanceof HttpError) return envelope(error.status, error.code, error.message);
      if (error instanceof ActorError && ACTOR_STATUS[error.code]) {
        const status = ACTOR_STATUS[error.code]!;
        if (status >= 500) log.warn({ correlationId, code: error.code, err: error.message }, "request failed in the actor runtime");
        return envelope(status, error.code, error.message);
      }
      if (code === "NOT_FOUND") return envelope(404, "NOT_FOUND", `no route for ${request.method} ${new URL(request.url).pathname}`);
      if (code === "PARSE") return envelope(400, "BAD_REQUEST", "the request body could not be parsed");
      if (code === "VALIDATION") return envelope(400, "VALIDATION_FAILED", validationDetail(error));
      log.error({ correlationId, err: error instanceof Error ? error.stack : String(error) }, "unhandled error");
      return envelope(500, "INTERNAL", "internal error; quote the correlation id when reporting it");
    });

/** "body.username: …", "query.limit: …": where the bad field is, and what is wrong with it. */
function validationDetail(error: unknown): string {
  const e = error as { type?: string; all?: Array<{ path?: string; summary?: string; message?: string }> };
  const where = e.type ?? "body";
  const first = e.all?.[0];
  if (!first) return `${where}: invalid`;
  const path = (first.path ?? "").replace(/^\//, "").replaceAll("/", ".");
  return `${path ? `${where}.${path}` : where}: ${first.summary ?? first.message ?? "invalid"}`;
}

/** The path as logged: a support code in it (the cancel route) is a secret of sorts, so masked. */
export const loggedPath = (url: string) => new URL(url).pathname.replace(/^\/api\/support-codes\/[^/]+/, "/api/support-codes/<code>");
