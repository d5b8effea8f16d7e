import { unpack } from "msgpackr";
import { encode, PROTOCOL_VERSION } from "../../src/protocol/agent.ts";

/** A scripted attended agent on /ws/support: says hello with a support code, then does as told. */
export async function supportAgent(app: { url: string }, code: string) {
  const ws = new WebSocket(`${app.url.replace(/^http/, "ws")}/ws/support`);
  ws.binaryType = "arraybuffer";
  const messages: any[] = [];
  ws.onmessage = (e) => messages.push(unpack(new Uint8Array(e.data as ArrayBuffer)));
  const closed = new Promise<{ code: number }>((r) => (ws.onclose = (e) => r({ code: e.code })));
  await new Promise<void>((r, j) => ((ws.onopen = () => r()), (ws.onerror = () => j(new Error("ws error")))));
  ws.send(new Uint8Array(encode({ t: "hello", code, agent_version: "test", protocol: PROTOCOL_VERSION, hostname: "laptop-7", user: "alice" } as never)));
  const waitFor = async (pred: (m: any) => boolean, ms = 5_000) => {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      const m = messages.find(pred);
      if (m) return m;
      await Bun.sleep(20);
    }
    throw new Error(`timed out: ${JSON.stringify(messages)}`);
  };
  return { ws, messages, closed, waitFor, send: (m: unknown) => ws.send(new Uint8Array(encode(m as never))) };
}

