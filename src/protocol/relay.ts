import { z } from "zod";

/**
 * Session control messages (S1, S4, S7): msgpack maps with a `t`, like the agent protocol,
 * validated on both ends. Bytes travel in data frames (frames.ts), never in these.
 *
 * Server → agent on /ws/agent (managed) or /ws/support (attended), per session:
 *   session.start, session.stop, notice, ch.open, ch.resize, ch.close, ch.eof, ch.ack, chat
 * Agent → server:
 *   consent, session.resumed, ch.opened, ch.closed, files.listing, ch.ack, chat
 * Viewer → server on /ws/viewer:
 *   term.open, term.resize, files.list, files.download, files.upload, cmd.run, ch.close,
 *   ch.eof, ch.ack, chat.send, session.end
 * Server → viewer:
 *   joined, session.state, viewers, ch.opened, ch.closed, ch.ack, files.listing, chat, error
 *
 * docs/PROTOCOL.md has the flows (consent, resume, upload and download windows).
 */

export const Channel = z.number().int().min(1).max(0xffff_ffff);
const Req = z.string().min(1).max(64).describe("the viewer's own id for the request, echoed back");
const Dims = { cols: z.number().int().min(1).max(1000), rows: z.number().int().min(1).max(1000) };
const Path = z.string().min(1).max(4096);
export const ChannelType = z.enum(["term", "list", "download", "upload", "cmd"]);
export type ChannelType = z.infer<typeof ChannelType>;
export const SessionKind = z.enum(["attended", "unattended", "end_user"]);
export type SessionKind = z.infer<typeof SessionKind>;
export const EndReason = z.enum(["technician", "end_user", "timeout", "removal", "superseded", "consent_denied", "agent_lost"]);
export type EndReason = z.infer<typeof EndReason>;
export const SessionState = z.enum(["waiting_for_agent", "awaiting_consent", "active", "agent_lost", "ended"]);
export type SessionState = z.infer<typeof SessionState>;
export const Access = z.enum(["control", "view"]);
export type Access = z.infer<typeof Access>;

/** Why a channel closed: `eof`/`exit` are normal ends, the rest are errors. */
export const ChannelEnd = z.object({
  reason: z.enum(["eof", "exit", "closed", "cancelled", "error", "session_ended", "agent_lost", "too_large"]),
  exit_code: z.number().int().nullable().optional(),
  bytes: z.number().int().nonnegative().optional(),
  error: z.object({ code: z.string().max(64), message: z.string().max(512) }).optional(),
});

export const FileEntry = z.object({
  name: z.string().max(4096),
  type: z.enum(["file", "dir", "link", "other"]),
  size: z.number().nonnegative(),
  mtime: z.number().describe("epoch ms"),
  mode: z.number().int().nonnegative(),
});

// ---- server → agent -------------------------------------------------------------------------

export const SessionStart = z.object({
  t: z.literal("session.start"),
  session: z.uuid(),
  kind: SessionKind,
  technician: z.string().max(256).describe("display name of the technician who opened it"),
  consent: z.enum(["required", "not_required"]),
  resume: z.boolean().describe("the agent came back within the grace period: keep what is still open"),
});
export const SessionStop = z.object({ t: z.literal("session.stop"), session: z.uuid(), reason: EndReason });
export const Notice = z.object({ t: z.literal("notice"), session: z.uuid(), text: z.string().max(1024) });
export const ChOpen = z.object({
  t: z.literal("ch.open"),
  session: z.uuid(),
  channel: Channel,
  type: ChannelType,
  ...Dims,
  path: Path.optional(),
  size: z.number().int().nonnegative().optional(),
  argv: z.array(z.string().max(4096)).min(1).max(256).optional(),
  cwd: Path.optional(),
}).partial({ cols: true, rows: true });
export const ChResize = z.object({ t: z.literal("ch.resize"), channel: Channel, ...Dims });
export const ChClose = z.object({ t: z.literal("ch.close"), channel: Channel });
export const ChEof = z.object({ t: z.literal("ch.eof"), channel: Channel });
export const ChAck = z.object({ t: z.literal("ch.ack"), channel: Channel, bytes: z.number().int().nonnegative() });
/** The longest chat text one frame carries to an agent; a longer room message goes in several frames. */
export const MAX_CHAT_TEXT = 4096;
export const MAX_CHAT_FROM = 256;
export const ChatToAgent = z.object({ t: z.literal("chat"), session: z.uuid(), from: z.string().max(MAX_CHAT_FROM), text: z.string().max(MAX_CHAT_TEXT) });

export const ServerToAgent = z.discriminatedUnion("t", [SessionStart, SessionStop, Notice, ChOpen, ChResize, ChClose, ChEof, ChAck, ChatToAgent]);
export type ServerToAgent = z.infer<typeof ServerToAgent>;

// ---- agent → server -------------------------------------------------------------------------

export const Consent = z.object({ t: z.literal("consent"), session: z.uuid(), granted: z.boolean() });
export const SessionResumed = z.object({ t: z.literal("session.resumed"), session: z.uuid(), channels: z.array(Channel).max(256) });
export const ChOpened = z.object({ t: z.literal("ch.opened"), channel: Channel, size: z.number().int().nonnegative().optional() });
export const ChClosed = z.object({ t: z.literal("ch.closed"), channel: Channel }).extend(ChannelEnd.shape);
export const FilesListing = z.object({ t: z.literal("files.listing"), channel: Channel, path: Path, entries: z.array(FileEntry).max(10_000) });
export const ChatFromAgent = z.object({ t: z.literal("chat"), session: z.uuid(), text: z.string().min(1).max(4096) });

export const AgentToServer = z.discriminatedUnion("t", [Consent, SessionResumed, ChOpened, ChClosed, FilesListing, ChAck, ChatFromAgent]);
export type AgentToServer = z.infer<typeof AgentToServer>;

// ---- viewer → server ------------------------------------------------------------------------

export const ViewerToServer = z.discriminatedUnion("t", [
  z.object({ t: z.literal("term.open"), req: Req, ...Dims }),
  z.object({ t: z.literal("term.resize"), channel: Channel, ...Dims }),
  z.object({ t: z.literal("files.list"), req: Req, path: Path }),
  z.object({ t: z.literal("files.download"), req: Req, path: Path }),
  z.object({ t: z.literal("files.upload"), req: Req, path: Path, size: z.number().int().nonnegative() }),
  z.object({ t: z.literal("cmd.run"), req: Req, argv: z.array(z.string().max(4096)).min(1).max(256), cwd: Path.optional() }),
  z.object({ t: z.literal("ch.close"), channel: Channel }),
  z.object({ t: z.literal("ch.eof"), channel: Channel }),
  ChAck,
  z.object({ t: z.literal("chat.send"), text: z.string().min(1).max(4096) }),
  z.object({ t: z.literal("session.end") }),
]);
export type ViewerToServer = z.infer<typeof ViewerToServer>;

// ---- server → viewer ------------------------------------------------------------------------

export const ViewerInfo = z.object({ viewer_id: z.string(), user_id: z.string().nullable(), name: z.string(), access: Access, since: z.number() });
export const ChannelInfo = z.object({ channel: Channel, type: ChannelType, viewer_id: z.string(), path: z.string().optional(), argv: z.array(z.string()).optional() });

export const ServerToViewer = z.discriminatedUnion("t", [
  z.object({ t: z.literal("joined"), session: z.uuid(), viewer_id: z.string(), access: Access, state: SessionState, viewers: z.array(ViewerInfo), channels: z.array(ChannelInfo) }),
  z.object({ t: z.literal("session.state"), state: SessionState, reason: EndReason.nullable() }),
  z.object({ t: z.literal("viewers"), viewers: z.array(ViewerInfo) }),
  z.object({ t: z.literal("ch.opened"), req: z.string().nullable(), channel: Channel, type: ChannelType, size: z.number().optional() }),
  z.object({ t: z.literal("ch.closed"), channel: Channel, req: z.string().optional().describe("the request of a channel that closed before it opened") }).extend(ChannelEnd.shape),
  ChAck,
  FilesListing.extend({ req: z.string().nullable() }),
  z.object({ t: z.literal("chat"), id: z.string().optional().describe("the message id in the session's room"), from: z.string(), role: z.enum(["technician", "end_user"]), text: z.string(), at: z.number() }),
  z.object({ t: z.literal("error"), req: z.string().nullable(), code: z.string(), message: z.string() }),
]);
export type ServerToViewer = z.infer<typeof ServerToViewer>;

/** Limits of the data plane, shared by relay, agent and tests. */
export const MAX_VIEWER_FRAME = 64 * 1024;
/** Upload and download: bytes in flight before the receiver's ch.ack. */
export const TRANSFER_WINDOW = 1024 * 1024;
/** File chunk payload: fits a viewer frame with its header. */
export const FILE_CHUNK = 60 * 1024;

/** Viewer close codes (4100+), distinct from the agent's. */
export const VIEWER_CLOSE = {
  SESSION_ENDED: 4100,
  TOO_SLOW: 4101, // fell too far behind the output; reconnect to catch up
  BAD_MESSAGE: 4102,
  THROTTLED: 4103, // input beyond the rate limit, persistently
  TOKEN_EXPIRED: 4104,
  SERVER_STOPPING: 4105,
  ACCESS_REVOKED: 4106, // the user was disabled, changed role or had their password reset
} as const;
