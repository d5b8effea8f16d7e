import { afterEach, expect, test } from "bun:test";
import { channelId, harness, SESSION, start, type Harness } from "./session-harness.ts";

const live: Harness[] = [];
afterEach(async () => {
  for (const h of live.splice(0)) await h.cleanup();
});

test("consent denied while disconnected is kept and sent before session.resumed; the person is not asked again", async () => {
  let answer: (v: boolean) => void = () => {};
  let asked = 0;
  const h = harness({
    graceMs: 10_000,
    consent: () => {
      asked++;
      return new Promise<boolean>((r) => (answer = r));
    },
  });
  live.push(h);
  start(h, { consent: "required" });
  while (asked === 0) await Bun.sleep(5);
  h.host.detach();
  answer(false); // the person says no while the connection is down
  await Bun.sleep(20);
  const seen = h.messages.length;
  h.host.attach(h.sender());
  start(h, { consent: "required", resume: true });
  await h.waitMessage("session.resumed");
  await Bun.sleep(50);
  const after = h.messages.slice(seen);
  expect(after).toEqual([
    { t: "consent", session: SESSION, granted: false },
    { t: "session.resumed", session: SESSION, channels: [] },
  ]);
  expect(asked).toBe(1);
  // And still no channel opens.
  const ch = channelId();
  h.host.handle({ t: "ch.open", session: SESSION, channel: ch, type: "cmd", argv: ["true"] });
  const closed = await h.waitMessage("ch.closed", (m) => m.channel === ch);
  expect(closed.reason).toBe("error");
});
