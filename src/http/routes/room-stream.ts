import { ROOM_CLOSE } from "../../protocol/rooms.ts";
import type { Subscriber, SubscriberCredential } from "../../rooms/hub.ts";
import type { RoomContext } from "../../rooms/room.ts";
import type { AppDeps } from "../deps.ts";

const encoder = new TextEncoder();

/**
 * A room as Server-Sent Events: `: connected` at once, every message as `id: <ulid>` /
 * `event: message`, a `live` event when history is done, `: ping` comments as heartbeats, and
 * a last `event: closed` with the reason when the server ends the stream (slow consumer, no
 * longer a member, its credential revoked or its user disabled, server stopping). The stream's queue is what tells a slow reader: beyond
 * the configured bytes, it is dropped and resumes with `Last-Event-ID`.
 */
export function roomStream(deps: AppDeps, room: RoomContext, member: string, after: string | null, auth?: StreamAuth): Response {
  const HIGH_WATER = 64 * 1024;
  let heartbeat: ReturnType<typeof setInterval> | undefined;
  let sub: Subscriber | undefined;
  let open = true;
  const finish = () => {
    open = false;
    clearInterval(heartbeat);
    if (sub) deps.rooms.hub.unsubscribe(room.id, sub);
  };

  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      const push = (text: string) => {
        if (open) controller.enqueue(encoder.encode(text));
      };
      sub = {
        member,
        credential: auth?.credential,
        send: (frame) => push(frame.sse),
        // What the stream holds that the socket has not taken (Bun pulls while the socket drains).
        backlog: () => (open ? Math.max(0, HIGH_WATER - (controller.desiredSize ?? 0)) : 0),
        close: (code, reason) => {
          if (!open) return;
          push(`event: closed\ndata: ${JSON.stringify({ code, reason })}\n\n`);
          finish();
          controller.close();
        },
      };
      push(": connected\n\n");
      heartbeat = setInterval(() => push(": ping\n\n"), deps.config.roomHeartbeatMs);
      deps.rooms.subscribe(room, sub!, after).catch((err: Error) => {
        deps.log.warn({ room_id: room.id, err: err.message }, "room stream failed while reading history");
        sub?.close(1011, "internal_error");
      });
      if (auth) recheckCredential(deps, room.id, sub!, auth.secret);
    },
    cancel() {
      finish();
    },
  }, new ByteLengthQueuingStrategy({ highWaterMark: HIGH_WATER }));

  return new Response(stream, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache, no-transform",
      // Proxies (nginx, caddy) must pass each event on as it comes.
      "x-accel-buffering": "no",
    },
  });
}

/** Who opened a stream: the credential (ended with it, see RoomHub.closeCredential) and its secret. */
export interface StreamAuth {
  credential: SubscriberCredential;
  secret: string;
}

/**
 * The credential was checked before the subscriber was registered; a revocation in between
 * (its hub.close* ran before the subscriber was there to close) is caught by checking again now
 * that it is registered: a revocation forgets the verifier's cached copy before closing streams,
 * so this lookup goes to the database.
 */
export function recheckCredential(deps: AppDeps, roomId: string, sub: Subscriber, secret: string): void {
  deps.verifier.resolve(secret).then((r) => {
    if (!r.ok) deps.rooms.hub.end(roomId, sub, ROOM_CLOSE.ACCESS_REVOKED, "access_revoked");
  }, () => {});
}

/** A principal's credential as a room stream records it. */
export function streamAuth(p: { credentialId: string; kind: "session" | "api_token"; userId: string }, secret: string | undefined): StreamAuth | undefined {
  return secret ? { credential: { id: p.credentialId, kind: p.kind, userId: p.userId }, secret } : undefined;
}
