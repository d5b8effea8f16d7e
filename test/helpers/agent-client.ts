import { BunWebSocket } from "../../src/agent/bun-websocket.ts";
import { AgentMessage, Challenge, decode, encode, helloHeaders, PROTOCOL_VERSION, Welcome, type Inventory } from "../../src/protocol/agent.ts";

/** An Ed25519 identity as an agent keeps it: the key pair and the base64 raw public key. */
export async function agentIdentity(): Promise<{ keys: CryptoKeyPair; publicKey: string }> {
  const keys = (await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"])) as CryptoKeyPair;
  return { keys, publicKey: Buffer.from(await crypto.subtle.exportKey("raw", keys.publicKey)).toString("base64") };
}

/** The headers of an upgrade presenting a hello for `machineId` and `key`; `over` replaces or adds any. */
export function presenting(machineId: string, key: string, over: Record<string, string> = {}): Record<string, string> {
  return { ...helloHeaders({ machine_id: machineId, key, agent_version: "test-1", protocol: PROTOCOL_VERSION }), ...over };
}

/**
 * A protocol-level agent for tests: a real WebSocket client doing the real handshake, with
 * hooks to misbehave (skip the proof, sign with another key, send a login token as the key).
 * With `headers` (see `presenting`) its upgrade presents the hello, as the bundled agent's
 * does, and `handshake` sends no hello frame.
 */
export class TestAgentSocket {
  readonly closed: Promise<{ code: number; reason: string }>;
  welcome: ReturnType<typeof Welcome.parse> | null = null;
  private readonly ws: WebSocket;
  private readonly inbox: Uint8Array[] = [];
  private wake: (() => void) | null = null;

  constructor(url: string, private readonly headers?: Record<string, string>) {
    this.ws = new BunWebSocket(url.replace(/^http/, "ws") + "/ws/agent", headers ? { headers } : undefined);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e) => {
      this.inbox.push(new Uint8Array(e.data as ArrayBuffer));
      this.wake?.();
    };
    this.closed = new Promise((resolve) => (this.ws.onclose = (e) => (resolve({ code: e.code, reason: e.reason }), this.wake?.())));
  }

  async open(): Promise<void> {
    if (this.ws.readyState === WebSocket.OPEN) return;
    await new Promise<void>((resolve, reject) => {
      this.ws.onopen = () => resolve();
      this.ws.onerror = () => reject(new Error("websocket error"));
    });
  }

  send(message: unknown): void {
    this.ws.send(new Uint8Array(encode(message as AgentMessage)));
  }

  sendRaw(bytes: Uint8Array): void {
    this.ws.send(new Uint8Array(bytes));
  }

  async next(timeoutMs = 5_000): Promise<Uint8Array | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.inbox.length === 0) {
      if (this.ws.readyState === WebSocket.CLOSED || Date.now() > deadline) return null;
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
    return this.inbox.shift()!;
  }

  /** The whole handshake; `signWith` may be another key, `skipProof` sends a heartbeat instead, `inventory` rides on the proof. */
  async handshake(machineId: string, key: string, privateKey: CryptoKey, opts: { signWith?: CryptoKey; skipProof?: boolean; inventory?: Inventory } = {}): Promise<boolean> {
    await this.open();
    if (!this.headers) this.send({ t: "hello", machine_id: machineId, key, agent_version: "test-1", protocol: PROTOCOL_VERSION });
    const frame = await this.next();
    const challenge = frame && decode(Challenge, frame);
    if (!challenge) return false;
    if (opts.skipProof) this.send({ t: "heartbeat", seq: 1 });
    else {
      const signature = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, opts.signWith ?? privateKey, new Uint8Array(challenge.nonce)));
      this.send({ t: "proof", signature, ...(opts.inventory ? { inventory: opts.inventory } : {}) });
    }
    const w = await this.next();
    this.welcome = w && decode(Welcome, w);
    return this.welcome !== null;
  }

  status(inventory: Inventory): void {
    this.send({ t: "status", inventory });
  }

  heartbeat(seq: number): void {
    this.send({ t: "heartbeat", seq });
  }

  close(): void {
    this.ws.close(1000, "bye");
  }

  /** A close frame with this code and reason (the reason is what the server sees as the agent's). */
  closeWith(code: number, reason: string): void {
    this.ws.close(code, reason);
  }
}
