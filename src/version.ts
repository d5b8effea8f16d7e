import pkg from "../package.json" with { type: "json" };
import { AGENT_VERSION } from "./agent/version.ts";

/** The server's version (package.json) and the agent version this server ships. */
export const SERVER_VERSION: string = pkg.version;
export { AGENT_VERSION };
