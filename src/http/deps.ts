import type { ActorSystem } from "../actors/system.ts";
import type { ClientIpResolver } from "../auth/client-ip.ts";
import type { CredentialVerifier } from "../auth/credentials.ts";
import type { Limiter } from "../auth/rate-limit.ts";
import type { Config } from "../config.ts";
import type { Logger } from "../log.ts";
import type { Store } from "../store/store.ts";
import type { AgentConnections } from "./ws/agent-connections.ts";

/** What the HTTP plugins are given. Built once in src/server.ts. */
export interface AppDeps {
  config: Config;
  store: Store;
  system: ActorSystem;
  log: Logger;
  verifier: CredentialVerifier;
  ips: ClientIpResolver;
  connections: AgentConnections;
  limiters: {
    loginByIp: Limiter;
    loginByUser: Limiter;
    enroll: Limiter;
  };
}
