import { z } from "zod";

/** Public bodies of agent distribution: the version an installer or updating agent checks. */
export const VersionInfo = z.object({
  server_version: z.string(),
  agent_version: z.string().describe("the agent version this server ships"),
  agent_binary: z.object({
    sha256: z.string().describe("hex SHA-256 of GET /api/agent/binary"),
    size_bytes: z.number().int(),
    platform: z.string().describe("linux-x64, linux-arm64, …: the server's own platform"),
  }).nullable().describe("null when the agent has not been built on this server (npm run build:agent)"),
});
