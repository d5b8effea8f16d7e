import { Elysia } from "elysia";
import { z } from "zod";
import { Uuid } from "../../protocol/accounts.ts";
import { ROOM_CLOSE } from "../../protocol/rooms.ts";
import type { Subscriber, TopicTransport } from "../../rooms/hub.ts";
import { RoomError } from "../../rooms/service.ts";
import type { RoomContext } from "../../rooms/room.ts";
import { authorize, type RequestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { resumePoint } from "../routes/rooms.ts";
import { recheckCredential, streamAuth, type StreamAuth } from "../routes/room-stream.ts";
import { bufferedAmount } from "./buffered.ts";

interface Admitted {
  room: RoomContext;
  member: string;
  after: string | null;
  auth?: StreamAuth;
}

/**
 * `/ws/rooms/:id?after=<message id>`: the same history-then-live stream as the SSE route, as
 * JSON text frames (`message`, `live`, `epoch`; src/protocol/rooms.ts). The login cookie or a
 * bearer token authenticates the upgrade; with the cookie, the Origin must be this server's
 * (a page elsewhere cannot ride a user's cookie). Subscribers send nothing but pings; any
 * other frame closes the socket. Closed with 4300 when too far behind, 4301 when removed, 4304
 * when the credential that opened it is revoked or its user disabled.
 */
export const roomSocket = (deps: AppDeps) => {
  const admitted = new WeakMap<Request, Admitted>();
  const subs = new WeakMap<object, Subscriber>();

  return new Elysia({ name: "room-socket" }).ws("/ws/rooms/:id", {
    async beforeHandle(ctx) {
      const c = ctx as unknown as RequestContext & { request: Request; params: { id: string }; query: Record<string, string | undefined> };
      const id = Uuid.safeParse(c.params.id);
      if (!id.success) throw new HttpError(400, "VALIDATION_FAILED", "params.id: a room id (uuid)");
      const me = await authorize(c, "rooms:read");
      if (c.credential?.via === "cookie" && !sameOrigin(c.request)) throw new HttpError(403, "CROSS_ORIGIN", "a cookie-authenticated room socket must come from this server's pages");
      try {
        const room = await deps.rooms.forMember(me.tenantId, id.data, me.userId);
        const after = await resumePoint(deps, room.id, room.policy.persist, c.query.after ?? c.request.headers.get("last-event-id"));
        admitted.set(c.request, { room, member: me.userId, after, auth: streamAuth(me, c.credential?.secret) });
      } catch (err) {
        if (err instanceof RoomError) throw new HttpError(err.status, err.code, err.message);
        throw err;
      }
    },
    query: z.object({ after: z.string().max(64).optional() }),
    open(ws) {
      const a = admitted.get(ws.data.request);
      if (!a) return ws.raw.close(ROOM_CLOSE.NOT_A_MEMBER, "not admitted");
      const raw = ws.raw;
      // Bun's server, to publish a room's frames to all its sockets at once (hub.ts, toTopic).
      const server = (ws.data as { server?: { publish?(topic: string, data: string): unknown } | null }).server;
      const sub: Subscriber = {
        member: a.member,
        credential: a.auth?.credential,
        send: (frame) => void raw.send(frame.json),
        backlog: () => bufferedAmount(raw),
        close: (code, reason) => raw.close(code, reason),
        topics: typeof server?.publish === "function"
          ? { publisher: server as TopicTransport["publisher"], subscribe: (topic) => void raw.subscribe(topic), unsubscribe: (topic) => void raw.unsubscribe(topic) }
          : undefined,
      };
      subs.set(raw, sub);
      (ws.data as { roomId?: string }).roomId = a.room.id;
      deps.rooms.subscribe(a.room, sub, a.after).catch((err: Error) => {
        deps.log.warn({ room_id: a.room.id, err: err.message }, "room socket failed while reading history");
        raw.close(1011, "internal_error");
      });
      if (a.auth) recheckCredential(deps, a.room.id, sub, a.auth.secret);
    },
    message(ws, message) {
      // Nothing to say but keep-alives: posting is POST /api/rooms/:id/messages.
      if (message === "ping" || (typeof message === "object" && (message as { t?: string })?.t === "ping")) return;
      ws.raw.close(1003, "subscribers only receive; post with POST /api/rooms/:id/messages");
    },
    close(ws) {
      const sub = subs.get(ws.raw);
      const roomId = (ws.data as { roomId?: string }).roomId;
      if (sub && roomId) deps.rooms.hub.unsubscribe(roomId, sub);
    },
  });
};

function sameOrigin(request: Request): boolean {
  const origin = request.headers.get("origin");
  if (!origin) return true; // not a browser page
  try {
    return new URL(origin).host === (request.headers.get("host") ?? new URL(request.url).host);
  } catch {
    return false;
  }
}
