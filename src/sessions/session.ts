import { assign, emit, enqueueActions, setup } from "xstate";
import type { Access, ChannelType, EndReason, SessionKind, SessionState } from "../protocol/relay.ts";
import { effect } from "../actors/effects.ts";
import type { Effect, KindDefinition } from "../actors/types.ts";

/**
 * A support session (SPEC S1): one actor per session, `session/<id>`. It owns the lifecycle
 * (waiting for the agent → awaiting consent → active ⇄ agent lost → ended, with the reason
 * kept), who is watching, and which channels are open. It never sees a byte of terminal or
 * file data: opening a channel here only emits `session.route` for the relay to set up, and
 * the data flows through the relay (src/relay). Effects:
 *   session.project  the sessions row lists and the viewer socket read
 *   session.event    one readable session event (and its audit entry)
 *   session.agent    a control message to the session's agent connection
 *   session.viewers  a control message to every viewer
 *   session.route    open a channel on the relay and ask the agent for it
 *   session.closed   the session ended: tell the agent, close viewers and routes
 */
export interface ViewerEntry {
  viewer_id: string;
  user_id: string | null;
  name: string;
  access: Access;
  since: number;
}
export interface ChannelEntry {
  channel: number;
  type: ChannelType;
  viewer_id: string;
  path?: string;
  argv?: string[];
  opened_at: number;
}

export interface SessionContext {
  id: string;
  tenantId: string | null;
  kind: SessionKind | null;
  machineId: string | null;
  technician: { userId: string | null; name: string };
  consent: "not_required" | "required" | "granted" | "denied";
  agentConn: string | null;
  attended: { host: string; user: string } | null;
  viewers: Record<string, ViewerEntry>;
  channels: Record<string, ChannelEntry>;
  /**
   * Channels whose relay routes died with a server process (kill -9, crash): recorded closed at
   * the restart, and the agent is told to close them when it comes back. Absent in snapshots
   * taken before it existed.
   */
  orphans?: number[];
  /** How often the agent was lost while consent was asked (bounded: MAX_CONSENT_LOSSES). */
  consentLosses?: number;
  endReason: EndReason | null;
  graceMs: number;
  consentMs: number;
  createdAt: number | null;
  startedAt: number | null;
  endedAt: number | null;
}

type At = { at: number };
export type SessionEvent =
  | ({ type: "session.create"; tenant_id: string; kind: SessionKind; machine_id: string | null; technician: { user_id: string | null; name: string }; consent_required: boolean; wait_ms: number; grace_ms: number; consent_ms: number } & At)
  /**
   * `by_code`: the agent proved nothing but the session's support code (/ws/support), so it may
   * not replace a connected agent. Absent from events journaled before that rule, which replay as
   * they were accepted then.
   */
  | ({ type: "agent.attached"; conn: string; host?: string; user?: string; by_code?: boolean } & At)
  /**
   * `resumable`: the agent may come back while consent is pending (the session waits its grace
   * period for it). Absent from events journaled before that rule: those ended the session, and
   * replay as they were accepted then.
   */
  | ({ type: "agent.detached"; conn: string; resumable?: boolean } & At)
  | ({ type: "consent.answer"; conn: string; granted: boolean } & At)
  | ({ type: "viewer.joined"; viewer_id: string; user_id: string | null; name: string; access: Access } & At)
  | ({ type: "viewer.left"; viewer_id: string } & At)
  | ({ type: "channel.open"; channel: number; channel_type: ChannelType; viewer_id: string; path?: string; argv?: string[]; cwd?: string; size?: number; cols?: number; rows?: number; req: string } & At)
  | ({ type: "channel.closed"; channel: number; reason: string; exit_code?: number | null; bytes?: number; error?: { code: string; message: string } } & At)
  | ({ type: "session.end"; by: "technician" | "end_user" | "removal" | "superseded"; user_id?: string | null } & At)
  | ({ type: "wait.expired" } & At)
  | ({ type: "consent.expired" } & At)
  | ({ type: "grace.expired" } & At)
  | ({ type: "server.restarted" } & At);

type Ev<T extends SessionEvent["type"]> = Extract<SessionEvent, { type: T }>;
type Args = { context: SessionContext; event: SessionEvent };

const MAX_VIEWERS = 32;
/**
 * An agent lost while consent is asked is waited for and asked again this many times; after,
 * losing it ends the session, so a flapping link cannot keep a session asking for ever.
 */
const MAX_CONSENT_LOSSES = 3;
const MAX_CHANNELS = 64;

/** `state` null: only the counts and consent changed. */
const project = (state: SessionState | null, c: SessionContext): Effect => ({
  type: "session.project",
  session_id: c.id,
  state,
  end_reason: c.endReason,
  consent: c.consent,
  agent_conn: c.agentConn,
  attended: c.attended,
  viewers: Object.keys(c.viewers).length,
  started_at: c.startedAt,
  ended_at: c.endedAt,
});
const event = (c: SessionContext, type: string, at: number, actor: string | null, details: Record<string, unknown> = {}): Effect =>
  ({ type: "session.event", session_id: c.id, tenant_id: c.tenantId, event: type, actor, details, at });
const viewerList = (c: SessionContext) => Object.values(c.viewers);
const toAgent = (c: SessionContext, message: Record<string, unknown>): Effect => ({ type: "session.agent", session_id: c.id, tenant_id: c.tenantId, machine_id: c.machineId, conn: c.agentConn, message });
const toViewers = (c: SessionContext, message: Record<string, unknown>): Effect => ({ type: "session.viewers", session_id: c.id, message });
const start = (c: SessionContext, resume: boolean): Effect =>
  toAgent(c, { t: "session.start", session: c.id, kind: c.kind, technician: c.technician.name, consent: c.consent === "required" ? "required" : "not_required", resume });

/** Everything that ends a session: the reason, the record, the agent told, viewers closed. */
function endWith(why: EndReason | ((a: Args) => EndReason), actor: (a: Args) => string | null = () => null) {
  const reasonOf = (a: Args) => (typeof why === "function" ? why(a) : why);
  return [
    assign({ endReason: (a: Args) => reasonOf(a), endedAt: ({ event }: Args) => event.at }),
    emit((a: Args) => event(a.context, "session.ended", a.event.at, actor(a), { reason: a.context.endReason, channels_open: Object.keys(a.context.channels).length }) as never),
    emit(({ context }: Args) => ({ type: "session.closed", session_id: context.id, conn: context.agentConn, reason: context.endReason }) as never),
    emit(({ context }: Args) => project("ended", context) as never),
    emit(() => effect.cancelTimer("wait") as never),
    emit(() => effect.cancelTimer("consent") as never),
    emit(() => effect.cancelTimer("grace") as never),
  ] as never[];
}

// Built outside setup(), so typed loosely; each is checked where the machine uses it.
const reply = (data: unknown) => emit(() => effect.reply(data) as never) as never;

/**
 * The server restarted under a live session: no agent is connected to the new process, and the
 * relay's routes (and recordings) of the open channels are gone with the old one. Each channel
 * is recorded closed (`server_restarted`) and remembered, so the agent closes it on its return
 * instead of keeping a shell nobody can reach; `graceFrom` starts the grace period (agent lost).
 */
const orphanChannels = (graceFrom: boolean) =>
  enqueueActions(({ context, event: e, enqueue }: { context: SessionContext; event: SessionEvent; enqueue: any }) => {
    const open = Object.values(context.channels);
    for (const ch of open) {
      enqueue.emit(() => event(context, "channel.closed", e.at, context.viewers[ch.viewer_id]?.user_id ?? null, { channel: ch.channel, channel_type: ch.type, reason: "server_restarted", ...(ch.path ? { path: ch.path } : {}), ...(ch.argv ? { argv: ch.argv } : {}) }) as never);
    }
    enqueue.assign({ agentConn: null, channels: {}, orphans: [...(context.orphans ?? []), ...open.map((ch) => ch.channel)] });
    enqueue(dropViewers);
    if (graceFrom) {
      enqueue.emit(() => event(context, "agent.lost", e.at, null, { grace_ms: context.graceMs, server_restarted: true, channels_closed: open.length }) as never);
      enqueue.emit(() => effect.setTimer("grace", e.at + context.graceMs, { type: "grace.expired" }) as never);
    }
  }) as never;

/**
 * The viewers' sockets died with the old process too: each is recorded as having left, and
 * the list emptied, so that ghosts neither show in it nor count against MAX_VIEWERS; the
 * viewers come back as new ones when their pages reconnect.
 */
const dropViewers = enqueueActions(({ context, event: e, enqueue }: { context: SessionContext; event: SessionEvent; enqueue: any }) => {
  for (const v of Object.values(context.viewers)) {
    enqueue.emit(() => event(context, "viewer.left", e.at, v.user_id, { viewer_id: v.viewer_id, name: v.name, reason: "server_restarted" }) as never);
  }
  enqueue.assign({ viewers: {} });
}) as never;

/** `session.end` from the API or a viewer: the reason is who ended it; the ask is answered. */
const endedBy = () => [
  ...endWith(({ event: e }) => (e as Ev<"session.end">).by, ({ event: e }) => (e as Ev<"session.end">).user_id ?? null),
  reply({ ok: true }),
] as never[];

export const sessionLogic = setup({
  types: {} as { context: SessionContext; events: SessionEvent; input: { id: string } },
  guards: {
    consentRequired: ({ context }) => context.consent === "required",
    isAgent: ({ context, event }) => "conn" in event && event.conn === context.agentConn,
    canOpen: ({ context, event }) => {
      const e = event as Ev<"channel.open">;
      return context.viewers[e.viewer_id]?.access === "control" && Object.keys(context.channels).length < MAX_CHANNELS && !context.channels[String(e.channel)];
    },
    hasRoom: ({ context }) => Object.keys(context.viewers).length < MAX_VIEWERS,
    /** Superseding is for sessions nobody uses: one a viewer joined since it looked idle stays. */
    watched: ({ context, event }) => event.type === "session.end" && event.by === "superseded" && Object.keys(context.viewers).length > 0,
    /** A code holder while the session's agent is still attached: it must not take over. */
    agentStillConnected: ({ context, event }) => event.type === "agent.attached" && event.by_code === true && context.kind === "attended" && context.agentConn !== null,
  },
}).createMachine({
  id: "session",
  context: ({ input }) => ({
    id: input.id, tenantId: null, kind: null, machineId: null, technician: { userId: null, name: "" }, consent: "not_required",
    agentConn: null, attended: null, viewers: {}, channels: {}, endReason: null, graceMs: 60_000, consentMs: 120_000,
    createdAt: null, startedAt: null, endedAt: null,
  }),
  initial: "new",
  on: {
    // Viewers come and go in every live state; the record and the agent's notice follow.
    "viewer.joined": [
      {
        guard: "hasRoom",
        actions: [
          assign({ viewers: ({ context, event: e }) => ({ ...context.viewers, [e.viewer_id]: { viewer_id: e.viewer_id, user_id: e.user_id, name: e.name, access: e.access, since: e.at } }) }),
          emit(({ context, event: e }) => event(context, "viewer.joined", e.at, e.user_id, { viewer_id: e.viewer_id, name: e.name, access: e.access }) as never),
          emit(({ context }) => toViewers(context, { t: "viewers", viewers: viewerList(context) }) as never),
          emit(({ context, event: e }) => toAgent(context, { t: "notice", session: context.id, text: `${e.name} joined (${e.access === "control" ? "control" : "view only"})` }) as never),
          emit(({ context }) => project(null, context) as never),
          reply({ ok: true }),
        ],
      },
      { actions: reply({ ok: false, code: "TOO_MANY_VIEWERS" }) },
    ],
    "viewer.left": {
      actions: [
        emit(({ context, event: e }) => (context.viewers[e.viewer_id] ? event(context, "viewer.left", e.at, context.viewers[e.viewer_id]!.user_id, { viewer_id: e.viewer_id, name: context.viewers[e.viewer_id]!.name }) : { type: "session.noop" }) as never),
        emit(({ context, event: e }) => (context.viewers[e.viewer_id] ? toAgent(context, { t: "notice", session: context.id, text: `${context.viewers[e.viewer_id]!.name} left` }) : { type: "session.noop" }) as never),
        assign({ viewers: ({ context, event: e }) => Object.fromEntries(Object.entries(context.viewers).filter(([k]) => k !== e.viewer_id)) }),
        emit(({ context }) => toViewers(context, { t: "viewers", viewers: viewerList(context) }) as never),
        emit(({ context }) => project(null, context) as never),
      ],
    },
    "channel.closed": {
      actions: [
        emit(({ context, event: e }) => {
          const ch = context.channels[String(e.channel)];
          if (!ch) return { type: "session.noop" } as never;
          const details: Record<string, unknown> = { channel: e.channel, channel_type: ch.type, reason: e.reason };
          if (ch.path) details.path = ch.path;
          if (ch.argv) details.argv = ch.argv;
          if (e.exit_code !== undefined) details.exit_status = e.exit_code; // not *_code: the audit log refuses keys that look like secrets
          if (e.bytes !== undefined) details.bytes = e.bytes;
          if (e.error) details.error = e.error.code;
          const type = ch.type === "download" || ch.type === "upload" ? "file.transferred" : ch.type === "cmd" ? "command.finished" : "channel.closed";
          if (type === "file.transferred") details.direction = ch.type === "upload" ? "to_machine" : "from_machine";
          return event(context, type, e.at, context.viewers[ch.viewer_id]?.user_id ?? null, details) as never;
        }),
        assign({ channels: ({ context, event: e }) => Object.fromEntries(Object.entries(context.channels).filter(([k]) => k !== String(e.channel))) }),
      ],
    },
  },
  states: {
    new: {
      on: {
        "session.create": {
          target: "waiting_for_agent",
          actions: [
            assign(({ event: e }) => ({
              tenantId: e.tenant_id, kind: e.kind, machineId: e.machine_id, technician: { userId: e.technician.user_id, name: e.technician.name },
              consent: e.consent_required ? ("required" as const) : ("not_required" as const), graceMs: e.grace_ms, consentMs: e.consent_ms, createdAt: e.at,
            })),
            emit(({ event: e }) => effect.setTimer("wait", e.at + e.wait_ms, { type: "wait.expired" }) as never),
            emit(({ context, event: e }) => event(context, "session.created", e.at, e.technician.user_id, { kind: e.kind, machine_id: e.machine_id, consent: context.consent, technician: e.technician.name }) as never),
            emit(({ context }) => project("waiting_for_agent", context) as never),
            reply({ ok: true }),
          ],
        },
        "*": { actions: reply({ ok: false, code: "SESSION_NOT_FOUND" }) },
      },
    },
    waiting_for_agent: {
      on: {
        "server.restarted": { guard: ({ context }) => Object.keys(context.viewers).length > 0, actions: [dropViewers, emit(({ context }) => project(null, context) as never)] },
        "agent.attached": [
          {
            guard: "consentRequired",
            target: "awaiting_consent",
            actions: [
              assign({ agentConn: ({ event: e }) => e.conn, attended: ({ event: e }) => (e.host !== undefined ? { host: e.host, user: e.user ?? "" } : null) }),
              emit(({ context, event: e }) => event(context, "agent.attached", e.at, null, context.attended ? { host: context.attended.host, user: context.attended.user } : {}) as never),
              emit(({ context }) => start(context, false) as never),
              emit(({ context, event: e }) => event(context, "consent.asked", e.at, null) as never),
              emit(({ context, event: e }) => effect.setTimer("consent", e.at + context.consentMs, { type: "consent.expired" }) as never),
              emit(() => effect.cancelTimer("wait") as never),
              emit(() => effect.cancelTimer("grace") as never),
              emit(({ context }) => project("awaiting_consent", context) as never),
              emit(({ context }) => toViewers(context, { t: "session.state", state: "awaiting_consent", reason: null }) as never),
              reply({ ok: true }),
            ],
          },
          {
            target: "active",
            actions: [
              assign({ agentConn: ({ event: e }) => e.conn, startedAt: ({ event: e }) => e.at, attended: ({ event: e }) => (e.host !== undefined ? { host: e.host, user: e.user ?? "" } : null) }),
              emit(({ context, event: e }) => event(context, "agent.attached", e.at, null, context.attended ? { host: context.attended.host, user: context.attended.user } : {}) as never),
              emit(({ context }) => start(context, false) as never),
              emit(() => effect.cancelTimer("wait") as never),
              emit(() => effect.cancelTimer("grace") as never),
              emit(({ context }) => project("active", context) as never),
              emit(({ context }) => toViewers(context, { t: "session.state", state: "active", reason: null }) as never),
              reply({ ok: true }),
            ],
          },
        ],
        "wait.expired": { target: "ended", actions: endWith("timeout") },
        // The person's agent, lost while asked for consent, did not come back in time.
        "grace.expired": { target: "ended", actions: endWith("agent_lost") },
        "session.end": [{ guard: "watched", actions: reply({ ok: false, code: "SESSION_IN_USE" }) }, { target: "ended", actions: endedBy() }],
      },
    },
    awaiting_consent: {
      on: {
        "consent.answer": [
          {
            guard: ({ context, event: e }) => e.conn === context.agentConn && e.granted,
            target: "active",
            actions: [
              assign({ consent: "granted", startedAt: ({ event: e }) => e.at }),
              emit(({ context, event: e }) => event(context, "consent.granted", e.at, null) as never),
              emit(() => effect.cancelTimer("consent") as never),
              emit(({ context }) => project("active", context) as never),
              emit(({ context }) => toViewers(context, { t: "session.state", state: "active", reason: null }) as never),
            ],
          },
          {
            guard: "isAgent",
            target: "ended",
            actions: [
              assign({ consent: "denied" }),
              emit(({ context, event: e }) => event(context, "consent.denied", e.at, null) as never),
              ...endWith("consent_denied"),
            ],
          },
        ],
        "consent.expired": { target: "ended", actions: [assign({ consent: "denied" }), emit(({ context, event: e }) => event(context, "consent.denied", e.at, null, { timeout: true }) as never), ...endWith("timeout")] },
        // The person's agent again while its old connection is not yet seen closed: it retries
        // (that close ends the session here, and the retry is then told so).
        "agent.attached": { guard: "agentStillConnected", actions: reply({ ok: false, code: "AGENT_CONNECTED" }) },
        "agent.detached": [
          {
            // The person's connection dropped while they were being asked: wait the grace period
            // for it, and ask again when it is back (the question went with the old connection).
            guard: ({ context, event: e }) => e.conn === context.agentConn && e.resumable === true && (context.consentLosses ?? 0) < MAX_CONSENT_LOSSES,
            target: "waiting_for_agent",
            actions: [
              assign({ agentConn: null, consentLosses: ({ context }) => (context.consentLosses ?? 0) + 1 }),
              emit(({ context, event: e }) => event(context, "agent.lost", e.at, null, { grace_ms: context.graceMs, consent: "pending" }) as never),
              emit(() => effect.cancelTimer("consent") as never),
              emit(({ context, event: e }) => effect.setTimer("grace", e.at + context.graceMs, { type: "grace.expired" }) as never),
              emit(({ context }) => project("waiting_for_agent", context) as never),
              emit(({ context }) => toViewers(context, { t: "session.state", state: "waiting_for_agent", reason: null }) as never),
            ],
          },
          { guard: "isAgent", target: "ended", actions: [assign({ agentConn: null }), ...endWith("agent_lost")] },
        ],
        "server.restarted": { target: "ended", actions: [assign({ agentConn: null }), ...endWith("agent_lost")] },
        "session.end": [{ guard: "watched", actions: reply({ ok: false, code: "SESSION_IN_USE" }) }, { target: "ended", actions: endedBy() }],
      },
    },
    active: {
      on: {
        "channel.open": [
          {
            guard: "canOpen",
            actions: [
              assign({ channels: ({ context, event: e }) => ({ ...context.channels, [String(e.channel)]: { channel: e.channel, type: e.channel_type, viewer_id: e.viewer_id, ...(e.path ? { path: e.path } : {}), ...(e.argv ? { argv: e.argv } : {}), opened_at: e.at } }) }),
              emit(({ context, event: e }) => ({ type: "session.route", session_id: context.id, tenant_id: context.tenantId, machine_id: context.machineId, conn: context.agentConn, req: e.req, viewer_id: e.viewer_id, open: { t: "ch.open", session: context.id, channel: e.channel, type: e.channel_type, ...pick(e) } }) as never),
              emit(({ context, event: e }) => event(context, "channel.opened", e.at, context.viewers[e.viewer_id]?.user_id ?? null, { channel: e.channel, channel_type: e.channel_type, ...(e.path ? { path: e.path } : {}), ...(e.argv ? { argv: e.argv } : {}), ...(e.size !== undefined ? { size: e.size } : {}) }) as never),
              reply({ ok: true }),
            ],
          },
          { actions: reply({ ok: false, code: "CHANNEL_REFUSED" }) },
        ],
        "agent.detached": {
          guard: "isAgent",
          target: "agent_lost",
          actions: [
            assign({ agentConn: null }),
            emit(({ context, event: e }) => event(context, "agent.lost", e.at, null, { grace_ms: context.graceMs }) as never),
            emit(({ context, event: e }) => effect.setTimer("grace", e.at + context.graceMs, { type: "grace.expired" }) as never),
            emit(({ context }) => project("agent_lost", context) as never),
            emit(({ context }) => toViewers(context, { t: "session.state", state: "agent_lost", reason: null }) as never),
          ],
        },
        "server.restarted": {
          target: "agent_lost",
          actions: [
            orphanChannels(true),
            emit(({ context }) => project("agent_lost", context) as never),
          ],
        },
        "agent.attached": [
          // Attended: a support code is the only credential, so a second connection holding it
          // does not take a live session over; the person's agent retries until the old one is
          // seen closed (then it resumes from agent_lost).
          { guard: "agentStillConnected", actions: reply({ ok: false, code: "AGENT_CONNECTED" }) },
          {
            // The same machine's agent again, on a new connection (the old one not yet seen closed).
            actions: [
              assign({ agentConn: ({ event: e }) => e.conn }),
              emit(({ context }) => start(context, true) as never),
              emit(({ context }) => project("active", context) as never),
              reply({ ok: true }),
            ],
          },
        ],
        "session.end": [{ guard: "watched", actions: reply({ ok: false, code: "SESSION_IN_USE" }) }, { target: "ended", actions: endedBy() }],
      },
    },
    agent_lost: {
      on: {
        "agent.attached": {
          target: "active",
          actions: [
            assign({ agentConn: ({ event: e }) => e.conn }),
            emit(({ context, event: e }) => event(context, "agent.resumed", e.at, null, { channels: Object.keys(context.channels).length }) as never),
            emit(({ context }) => start(context, true) as never),
            // Channels that died with an old server process: closed on the agent too.
            enqueueActions(({ context, enqueue }) => {
              if (!context.orphans?.length) return;
              for (const channel of context.orphans) enqueue.emit(() => toAgent(context, { t: "ch.close", channel }) as never);
              enqueue.assign({ orphans: [] });
            }),
            emit(() => effect.cancelTimer("grace") as never),
            emit(({ context }) => project("active", context) as never),
            emit(({ context }) => toViewers(context, { t: "session.state", state: "active", reason: null }) as never),
            reply({ ok: true }),
          ],
        },
        "grace.expired": { target: "ended", actions: endWith("agent_lost") },
        // Restarted again while lost: the grace period already runs (its timer is durable).
        "server.restarted": { actions: [orphanChannels(false), emit(({ context }) => project(null, context) as never)] },
        "session.end": [{ guard: "watched", actions: reply({ ok: false, code: "SESSION_IN_USE" }) }, { target: "ended", actions: endedBy() }],
      },
    },
    ended: {
      entry: assign({ channels: {}, viewers: {} }),
      on: {
        "agent.attached": { actions: reply({ ok: false, code: "SESSION_ENDED" }) },
        "viewer.joined": { actions: reply({ ok: false, code: "SESSION_ENDED" }) },
        "channel.open": { actions: reply({ ok: false, code: "SESSION_ENDED" }) },
        "session.end": { actions: reply({ ok: false, code: "SESSION_ENDED" }) },
        "viewer.left": {},
        "channel.closed": {},
      },
    },
  },
});

/** The ch.open fields an event carries for its channel type. */
function pick(e: Ev<"channel.open">) {
  const out: Record<string, unknown> = {};
  for (const k of ["path", "argv", "cwd", "size", "cols", "rows"] as const) if (e[k] !== undefined) out[k] = e[k];
  return out;
}

export type SessionEffects = Record<string, (effect: Effect) => void | Promise<void>>;

export const sessionKind = (effects: SessionEffects = {}): KindDefinition => ({
  kind: "session",
  logic: sessionLogic,
  // 2: a restart drops the viewers (the snapshot's shape is unchanged; replay skips version 1's).
  version: 2,
  migrations: { 1: (snapshot) => snapshot },
  input: (id) => ({ id }),
  effects: { "session.noop": () => {}, ...effects },
  options: { snapshotEvery: 50 },
});
