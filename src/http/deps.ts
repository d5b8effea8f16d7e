import type { Serial } from "../actors/serial.ts";
import type { ActorSystem } from "../actors/system.ts";
import type { ClientIpResolver } from "../auth/client-ip.ts";
import type { CredentialVerifier } from "../auth/credentials.ts";
import type { Ed25519Verifier } from "../auth/ed25519-verifier.ts";
import type { Limiter } from "../auth/rate-limit.ts";
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import type { Store } from "../store/store.ts";
import type { Recorder } from "../recordings/recorder.ts";
import type { Relay } from "../relay/relay.ts";
import type { Rooms } from "../rooms/service.ts";
import type { ViewerTokens } from "../sessions/viewer-tokens.ts";
import type { AgentConnections } from "./ws/agent-connections.ts";

/** What the HTTP plugins are given. Built once in src/server.ts. */
export interface AppDeps {
  config: Config;
  store: Store;
  system: ActorSystem;
  log: Logger;
  verifier: CredentialVerifier;
  /** Checks the agents' proofs of possession on threads of their own (src/auth/ed25519-verifier.ts). */
  signatures: Ed25519Verifier;
  ips: ClientIpResolver;
  connections: AgentConnections;
  relay: Relay;
  viewerTokens: ViewerTokens;
  /** The sessions rows' writes, in event order; await `settled(id)` to read your own changes. */
  sessionWrites: Serial;
  recorder: Recorder;
  rooms: Rooms;
  limiters: {
    loginByIp: Limiter;
    loginByUser: Limiter;
    enroll: Limiter;
    supportCode: Limiter;
    /** Self-service checks of the caller's own password (password change, TOTP disable), per user. */
    passwordCheck: Limiter;
  };
}
