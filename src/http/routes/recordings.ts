import { Elysia } from "elysia";
import { z } from "zod";
import { audit } from "../../audit/audit.ts";
import { Uuid } from "../../protocol/accounts.ts";
import { CORRELATION_HEADER } from "../../protocol/errors.ts";
import { MachineRecordingsQuery, Recording, RecordingList, RecordingPage } from "../../protocol/recordings.ts";
import { CAST_CONTENT_TYPE, openCast } from "../../recordings/asciicast.ts";
import { CursorError, getRecording, listMachineRecordings, listSessionRecordings, publicRecording } from "../../recordings/recordings.ts";
import { actorOf, authorize, requestContext } from "../context.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";

const tags = ["recordings"];
const IdParams = z.object({ id: Uuid });
const notFound = () => new HttpError(404, "RECORDING_NOT_FOUND", "no such recording");

/**
 * Terminal recordings (S6): list a session's or a machine's, read one, export one as an
 * asciicast v2 file (streamed; each export is audited). `recordings:read`: admins,
 * technicians and auditors of the tenant.
 */
export const recordingRoutes = (deps: AppDeps) =>
  new Elysia({ name: "recording-routes" })
    .use(requestContext(deps))
    .get("/api/sessions/:id/recordings", async (ctx) => {
      const me = await authorize(ctx, "recordings:read");
      const rows = await listSessionRecordings(deps.store, me.tenantId, ctx.params.id);
      if (!rows) throw new HttpError(404, "SESSION_NOT_FOUND", "no such session");
      return { recordings: rows.map(publicRecording) };
    }, { params: IdParams, response: { 200: RecordingList }, detail: { tags, summary: "A session's terminal recordings, oldest first" } })

    .get("/api/machines/:id/recordings", async (ctx) => {
      const me = await authorize(ctx, "recordings:read");
      let page: Awaited<ReturnType<typeof listMachineRecordings>>;
      try {
        page = await listMachineRecordings(deps.store, me.tenantId, ctx.params.id, ctx.query);
      } catch (e) {
        if (e instanceof CursorError) throw new HttpError(400, "VALIDATION_FAILED", `query.cursor: ${e.message}`);
        throw e;
      }
      if (!page) throw new HttpError(404, "MACHINE_NOT_FOUND", "no such machine");
      return { recordings: page.recordings.map(publicRecording), next_cursor: page.next_cursor };
    }, { params: IdParams, query: MachineRecordingsQuery, response: { 200: RecordingPage }, detail: { tags, summary: "A machine's terminal recordings, newest first, a page at a time" } })

    .get("/api/recordings/:id", async (ctx) => {
      const me = await authorize(ctx, "recordings:read");
      const row = await getRecording(deps.store, me.tenantId, ctx.params.id);
      if (!row) throw notFound();
      return publicRecording(row);
    }, { params: IdParams, response: { 200: Recording }, detail: { tags, summary: "One recording" } })

    .get("/api/recordings/:id/cast", async (ctx) => {
      const me = await authorize(ctx, "recordings:read");
      const cast = await openCast(deps.store, me.tenantId, ctx.params.id, {
        onCorrupt: (seq, err) => deps.log.error({ recording_id: ctx.params.id, seq, err: err.message }, "recordings: a stored chunk is damaged; the export skips it"),
      });
      if (!cast) throw notFound();
      const r = cast.recording;
      await audit(deps.store, {
        tenantId: me.tenantId, type: "recording.exported", actor: actorOf(me), target: { type: "recording", id: r.id },
        ip: ctx.ip, correlationId: ctx.correlationId, details: { session_id: r.session_id, machine_id: r.machine_id, channel: Number(r.channel) },
      });
      return new Response(cast.stream, {
        headers: {
          "content-type": CAST_CONTENT_TYPE,
          "content-disposition": `attachment; filename="${cast.filename}"`,
          "cache-control": "no-store",
          "x-content-type-options": "nosniff",
          [CORRELATION_HEADER]: ctx.correlationId,
        },
      });
    }, { params: IdParams, detail: { tags, summary: "Export a recording as an asciicast v2 file (application/x-asciicast), for asciinema and its player" } });
