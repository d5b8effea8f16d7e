import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { VIEWER_CLOSE } from "../../src/protocol/relay.ts";
import { E2e, nextLog, runName, shellReady, type ManagedAgent } from "../helpers/e2e.ts";
import { eventually, FLAVORS } from "../helpers/stores.ts";
import type { TestViewer } from "../helpers/viewer-client.ts";

/**
 * Issue 5, requirement 9, the two cases the in-process tests cannot show on their own, with real
 * processes on loopback: a server (`src/main.ts`), attended agents (`src/agent/main.ts --code`)
 * and a managed agent with real PTYs, and viewers on /ws/viewer.
 *
 *  - Attended: a technician's support code; the person denies (no channel ever opens) or
 *    allows (a terminal runs, the person is told who is there).
 *  - Resume: the managed agent's connection breaks while its process lives on (frozen with
 *    SIGSTOP past offline_after; the server killed and started again), and the session comes
 *    back within the grace period; then a grace period that runs out.
 *
 * Short timings: heartbeat 300 ms, offline after 1500 ms (a silent agent is dropped within
 * ~1.9 s), session grace 6 s on the server. Every wait is for a condition, with a deadline.
 */
const HEARTBEAT_MS = 300;
const OFFLINE_AFTER_MS = 1_500;
const GRACE_MS = 6_000;
const ADMIN_PASSWORD = "e2e attended correct horse battery";

for (const flavor of FLAVORS) {
  describe(`attended and resumed sessions end to end (${flavor})`, () => {
    let e2e: E2e;
    let tech: { id: string; username: string; token: string };
    const run = runName("e2ea");
    const timings: Record<string, number> = {};

    const sessionOf = async (id: string) => (await e2e.api("GET", `/api/sessions/${id}`)).body;
    const types = (events: any[]) => events.map((e) => e.type);
    /** Asks for a terminal; once it is open, waits for the shell's prompt. */
    const openTerminal = async (v: TestViewer, req: string) => {
      v.send({ t: "term.open", req, cols: 80, rows: 24 });
      const answer = await v.waitFor((m) => (m.t === "ch.opened" || m.t === "error") && m.req === req, 10_000, `ch.opened ${req}`);
      if (answer.t === "ch.opened") await shellReady(v, answer.channel);
      return answer;
    };
    /** Types `echo` of a marker the shell has to compute, so the echoed input cannot match. */
    const echoes = async (v: TestViewer, channel: number, n: number) => {
      v.sendData(channel, `echo hello-$((${n}+1))\n`);
      await v.waitForText(channel, `hello-${n + 1}\r\n`, 10_000);
    };

    beforeAll(async () => {
      e2e = await E2e.create(flavor, {
        adminPassword: ADMIN_PASSWORD,
        env: { TETHER_HEARTBEAT_MS: String(HEARTBEAT_MS), TETHER_OFFLINE_AFTER_MS: String(OFFLINE_AFTER_MS), TETHER_SESSION_GRACE_MS: String(GRACE_MS) },
      });
      await e2e.start();
      tech = await e2e.user("technician", `alice-${run}`);
    }, 40_000);

    afterAll(async () => {
      await e2e?.cleanup();
      console.log(`[attended/resume e2e ${flavor}] timings (ms): ${JSON.stringify(timings)}`);
    });

    // ---- attended ------------------------------------------------------------------------------

    test("attended, consent denied (--consent deny): the session ends consent_denied and never opens a channel", async () => {
      const created = await e2e.api("POST", "/api/support-codes", {}, tech.token);
      expect(created.status).toBe(201);
      const { code, session_id: sessionId } = created.body;
      expect(await sessionOf(sessionId)).toMatchObject({ kind: "attended", state: "waiting_for_agent", consent: "required" });

      // A viewer there before the person: asking for a terminal now gets no channel.
      const viewer = await e2e.viewer(sessionId, "control", tech.token);
      expect(viewer.messages.find((m) => m.t === "joined")).toMatchObject({ state: "waiting_for_agent", channels: [] });
      expect(await openTerminal(viewer, "early")).toMatchObject({ t: "error", code: "CHANNEL_REFUSED" });
      const spare = await e2e.api("POST", `/api/sessions/${sessionId}/viewer-token`, { access: "control" }, tech.token);
      expect(spare.status).toBe(201);

      const person = e2e.attended(code, ["--consent", "deny"]);
      expect(await person.exit(15_000)).toBe(0);
      const shown = person.out.join("\n");
      expect(shown).toContain(`Technician ${tech.username} wants to connect.`);
      expect(shown).toContain("Allow? [y/N] N (--consent deny)");
      expect(shown).toContain("The session has ended (you declined).");
      expect(shown).not.toContain("is now connected");

      // The viewer is told why and let go; the session is over for good.
      expect(await viewer.waitFor((m) => m.t === "session.state" && m.state === "ended", 5_000, "ended")).toMatchObject({ reason: "consent_denied" });
      expect((await viewer.closed).code).toBe(VIEWER_CLOSE.SESSION_ENDED);
      expect(viewer.messages.some((m) => m.t === "ch.opened")).toBe(false);
      const ended = await e2e.waitSession(sessionId, (s) => s?.state === "ended", 5_000, "session ended");
      expect(ended).toMatchObject({ state: "ended", end_reason: "consent_denied", consent: "denied" });
      expect((await e2e.api("POST", `/api/sessions/${sessionId}/viewer-token`, { access: "control" }, tech.token)).status).toBe(409);
      expect(await e2e.viewerUpgradeStatus(sessionId, spare.body.token)).toBe(409);

      let events: any[] = [];
      await eventually(async () => types((events = await e2e.events(sessionId))).includes("session.ended"), 5_000, "session.ended event");
      expect(types(events)).toContain("consent.asked");
      expect(types(events)).toContain("consent.denied");
      expect(types(events).indexOf("consent.asked")).toBeLessThan(types(events).indexOf("consent.denied"));
      expect(types(events).filter((t) => t.startsWith("channel."))).toEqual([]);
      expect(events.find((e) => e.type === "session.ended").details).toMatchObject({ reason: "consent_denied", channels_open: 0 });
      expect(events.find((e) => e.type === "agent.attached").details.host.length).toBeGreaterThan(0);
    }, 30_000);

    test("attended, consent allowed (--consent allow): the person is told who connects and joins; a terminal runs echo hello", async () => {
      const created = await e2e.api("POST", "/api/support-codes", {}, tech.token);
      expect(created.status).toBe(201);
      const { code, session_id: sessionId } = created.body;
      const person = e2e.attended(code, ["--consent", "allow"]);
      await person.waitOut(`Technician ${tech.username} wants to connect.`);
      await person.waitOut(`Technician ${tech.username} is now connected to this computer.`);
      await e2e.waitSession(sessionId, (s) => s?.state === "active", 5_000, "session active");
      expect(await sessionOf(sessionId)).toMatchObject({ kind: "attended", consent: "granted" });

      const control = await e2e.viewer(sessionId, "control", tech.token);
      await person.waitOut(`* ${tech.username} joined (control)`);
      const opened = await openTerminal(control, "t1");
      expect(opened).toMatchObject({ t: "ch.opened", type: "term" });
      control.sendData(opened.channel, "echo hello\n");
      await control.waitForText(opened.channel, "\nhello\r", 10_000);

      const watcher = await e2e.viewer(sessionId, "view"); // the admin, watching
      await person.waitOut("* admin joined (view only)");
      watcher.close();
      await person.waitOut("* admin left");

      expect((await e2e.api("POST", `/api/sessions/${sessionId}/end`, {}, tech.token)).status).toBe(200);
      expect(await person.exit()).toBe(0);
      expect(person.out.join("\n")).toContain("The session has ended (the technician ended it).");
      expect(await control.waitFor((m) => m.t === "session.state" && m.state === "ended", 5_000, "ended")).toMatchObject({ reason: "technician" });

      let events: any[] = [];
      await eventually(async () => types((events = await e2e.events(sessionId))).includes("session.ended"), 5_000, "session.ended event");
      for (const t of ["agent.attached", "consent.asked", "consent.granted", "viewer.joined", "channel.opened"]) expect(types(events)).toContain(t);
      expect(types(events).indexOf("consent.granted")).toBeLessThan(types(events).indexOf("channel.opened"));
      expect(events.find((e) => e.type === "session.ended").details).toMatchObject({ reason: "technician" });
    }, 30_000);

    // ---- a managed agent's connection breaks; the session resumes ------------------------------

    let managed: ManagedAgent;
    let sessionId = "";
    let control: TestViewer;
    let term = 0;
    let term2 = 0;

    test("a frozen agent is dropped (agent_lost) and, back within the grace, resumes the same session with its terminal", async () => {
      const site = await e2e.site(run);
      // The agent's own grace is the server's: it keeps the session's terminal across the break.
      managed = await e2e.enroll(site, ["--session-grace-ms", String(GRACE_MS)], { SHELL: "/bin/sh" });
      const created = await e2e.api("POST", "/api/sessions", { machine_id: managed.id });
      expect(created.status).toBe(201);
      expect(created.body).toMatchObject({ kind: "unattended", consent: "not_required" });
      sessionId = created.body.id;
      await e2e.waitSession(sessionId, (s) => s?.state === "active", 5_000, "session active");
      control = await e2e.viewer(sessionId, "control");
      const opened = await openTerminal(control, "t1");
      expect(opened).toMatchObject({ t: "ch.opened", type: "term" });
      term = opened.channel;
      control.sendData(term, "X=kept-$((6*7))\n");
      await echoes(control, term, 1);

      // Frozen: its socket stays open but silent; the server drops it after offline_after.
      const agent = managed.agent;
      const from = agent.logs.length;
      const stoppedAt = Date.now();
      agent.proc.kill("SIGSTOP");
      try {
        await e2e.waitSession(sessionId, (s) => s?.state === "agent_lost", OFFLINE_AFTER_MS + 5_000, "agent_lost");
        timings.frozenToAgentLost = Date.now() - stoppedAt;
        expect(await control.waitFor((m) => m.t === "session.state" && m.state === "agent_lost", 5_000, "agent_lost to the viewer")).toBeTruthy();
      } finally {
        agent.proc.kill("SIGCONT");
      }
      const lostAt = Date.now();
      await nextLog(agent, from, (e) => e.event === "connect.online", 10_000, "reconnected");
      await control.waitFor((m) => m.t === "session.state" && m.state === "active" && control.messages.indexOf(m) > control.messages.findIndex((x) => x.t === "session.state" && x.state === "agent_lost"), 10_000, "active again");
      timings.agentLostToActive = Date.now() - lostAt;
      // The viewer is told at once; the row follows once the event is written.
      expect(await e2e.waitSession(sessionId, (s) => s?.state === "active", 5_000, "active in the API")).toMatchObject({ id: sessionId, state: "active", end_reason: null });
      const resumed = await nextLog(agent, from, (e) => e.event === "session.resumed", 5_000, "the agent's resume");
      expect(resumed).toMatchObject({ session: sessionId, channels: 1 });

      // The same terminal, the same shell (its variable is still set), and a new one beside it.
      control.sendData(term, "echo $X\n");
      await control.waitForText(term, "kept-42\r\n", 10_000);
      await echoes(control, term, 2);
      const second = await openTerminal(control, "t2");
      expect(second).toMatchObject({ t: "ch.opened", type: "term" });
      term2 = second.channel;
      control.sendData(second.channel, "echo hello\n");
      await control.waitForText(second.channel, "\nhello\r", 10_000);

      let events: any[] = [];
      await eventually(async () => types((events = await e2e.events(sessionId))).includes("agent.resumed"), 5_000, "agent.resumed event");
      const lost = events.find((e) => e.type === "agent.lost");
      expect(lost.details).toMatchObject({ grace_ms: GRACE_MS });
      expect(events.find((e) => e.type === "agent.resumed").details).toMatchObject({ channels: 1 });
      expect(events.indexOf(lost)).toBeLessThan(events.findIndex((e) => e.type === "agent.resumed"));
      expect(types(events)).not.toContain("session.ended");
      expect(types(events).filter((t) => t === "channel.opened")).toHaveLength(2);
      expect(types(events)).not.toContain("channel.closed");
    }, 40_000);

    test("the server killed (kill -9) and started again on the same data and port: the session resumes; a terminal from before is reported closed, a new one works", async () => {
      const agent = managed.agent;
      const from = agent.logs.length;
      const port = e2e.port;
      expect(await e2e.kill("SIGKILL")).not.toBe(0);
      await nextLog(agent, from, (e) => e.event === "connect.closed", 5_000, "the agent noticing");
      await e2e.start();
      expect(e2e.port).toBe(port);
      await nextLog(agent, from, (e) => e.event === "connect.online", 10_000, "online after the restart");
      // The row said active before the kill: wait for the resume to be recorded, then for the row.
      await eventually(async () => types(await e2e.events(sessionId)).filter((t) => t === "agent.resumed").length === 2, 10_000, "a second agent.resumed event");
      const back = await e2e.waitSession(sessionId, (s) => s?.state === "active", 5_000, "active after the restart");
      timings.serverUpToActive = Date.now() - e2e.listeningAt;
      expect(back).toMatchObject({ id: sessionId, state: "active", end_reason: null });

      control = await e2e.viewer(sessionId, "control");
      const joined = control.messages.find((m) => m.t === "joined");
      expect(joined).toMatchObject({ state: "active" });
      // The relay's routes died with the old process: the terminals of before are not offered as open…
      expect(joined.channels).toEqual([]);
      // …and the agent is told to close them, rather than keep shells nobody can reach.
      await nextLog(agent, from, (e) => e.event === "channel.closed" && e.type === "term", 10_000, "the old terminals closed on the agent");
      await eventually(() => agent.logs.slice(from).filter((e) => e.event === "channel.closed" && e.type === "term").length === 2, 10_000, "both old terminals closed");

      const opened = await openTerminal(control, "t3");
      expect(opened).toMatchObject({ t: "ch.opened", type: "term" });
      control.sendData(opened.channel, "echo hello\n");
      await control.waitForText(opened.channel, "\nhello\r", 10_000);

      const events = await e2e.events(sessionId);
      expect(types(events).filter((t) => t === "agent.lost")).toHaveLength(2);
      expect(events.filter((e) => e.type === "agent.resumed").at(-1).details).toMatchObject({ channels: 0 });
      const closed = events.filter((e) => e.type === "channel.closed").map((e) => e.details).sort((a, b) => a.channel - b.channel);
      expect(closed).toEqual([term, term2].sort((a, b) => a - b).map((channel) => expect.objectContaining({ channel, channel_type: "term", reason: "server_restarted" })));
      expect(events.filter((e) => e.type === "agent.lost").at(-1).details).toMatchObject({ grace_ms: GRACE_MS, server_restarted: true, channels_closed: 2 });
      expect(types(events)).not.toContain("session.ended");
    }, 40_000);

    test("not back within the grace: the session ends with agent_lost, and the agent's return does not revive it", async () => {
      const agent = managed.agent;
      const from = agent.logs.length;
      const stoppedAt = Date.now();
      agent.proc.kill("SIGSTOP");
      let ended: any;
      try {
        await e2e.waitSession(sessionId, (s) => s?.state === "agent_lost", OFFLINE_AFTER_MS + 5_000, "agent_lost");
        expect(await control.waitFor((m) => m.t === "session.state" && m.state === "agent_lost", 5_000, "agent_lost to the viewer")).toBeTruthy();
        ended = await e2e.waitSession(sessionId, (s) => s?.state === "ended", GRACE_MS + 5_000, "ended after the grace");
        timings.frozenToEnded = Date.now() - stoppedAt;
      } finally {
        agent.proc.kill("SIGCONT");
      }
      expect(ended).toMatchObject({ id: sessionId, state: "ended", end_reason: "agent_lost" });
      expect(timings.frozenToEnded).toBeGreaterThanOrEqual(GRACE_MS);
      expect(await control.waitFor((m) => m.t === "session.state" && m.state === "ended", 5_000, "ended to the viewer")).toMatchObject({ reason: "agent_lost" });
      expect((await control.closed).code).toBe(VIEWER_CLOSE.SESSION_ENDED);

      // The agent comes back online, but the session stays over.
      await nextLog(agent, from, (e) => e.event === "connect.online", 10_000, "reconnected");
      await e2e.waitMachine(managed.id, "online", 5_000);
      expect(await sessionOf(sessionId)).toMatchObject({ state: "ended", end_reason: "agent_lost" });
      expect((await e2e.api("POST", `/api/sessions/${sessionId}/viewer-token`, { access: "control" })).status).toBe(409);

      let events: any[] = [];
      await eventually(async () => types((events = await e2e.events(sessionId))).includes("session.ended"), 5_000, "session.ended event");
      expect(types(events).slice(-2)).toEqual(["agent.lost", "session.ended"]);
      expect(events.at(-1).details).toMatchObject({ reason: "agent_lost" });
    }, 40_000);
  });
}
