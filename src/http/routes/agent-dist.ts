import { Elysia } from "elysia";
import { AgentBinary } from "../../install/agent-binary.ts";
import { installScript } from "../../install/install-script.ts";
import { VersionInfo } from "../../protocol/install.ts";
import { AGENT_VERSION, SERVER_VERSION } from "../../version.ts";
import type { AppDeps } from "../deps.ts";
import { HttpError } from "../errors.ts";
import { publicUrl } from "../public-url.ts";

const tags = ["agent"];

/**
 * Public agent distribution (M7): the version and checksum, the binary, and the install script
 * that fetches and checks it. Public because a machine being installed has no credential yet;
 * none of it is secret (the enrollment key travels only in the admin's install command).
 */
export const agentDistRoutes = (deps: AppDeps) => {
  const binary = new AgentBinary(deps.config.agentBinary);
  return new Elysia({ name: "agent-dist-routes" })
    .get("/api/version", async () => {
      const info = await binary.info();
      return {
        server_version: SERVER_VERSION,
        agent_version: AGENT_VERSION,
        agent_binary: info && { sha256: info.sha256, size_bytes: info.sizeBytes, platform: info.platform },
      };
    }, { response: { 200: VersionInfo }, detail: { tags, summary: "Server and agent versions, and the agent binary's SHA-256 (public)" } })

    .get("/api/agent/binary", async ({ set }) => {
      const info = await binary.info();
      if (!info) throw new HttpError(404, "AGENT_BINARY_UNAVAILABLE", "the agent has not been built on this server (npm run build:agent)");
      set.headers["content-type"] = "application/octet-stream";
      set.headers["content-disposition"] = 'attachment; filename="tether-agent"';
      set.headers["x-tether-sha256"] = info.sha256;
      set.headers["x-tether-platform"] = info.platform;
      return Bun.file(info.path);
    }, { detail: { tags, summary: "The agent executable for this server's platform (public; check it against /api/version)" } })

    .get("/api/agent/install.sh", async ({ request, set }) => {
      set.headers["content-type"] = "text/x-shellscript; charset=utf-8";
      set.headers["cache-control"] = "no-store";
      // Served even without a binary: the script then fails with a message rather than `sh`
      // quietly running nothing.
      return installScript(publicUrl(deps.config, request), await binary.info());
    }, { detail: { tags, summary: "The agent install script (public): downloads and checks the binary, installs a systemd unit" } });
};
