import TEMPLATE from "./install.sh" with { type: "text" };
import type { AgentBinaryInfo } from "./agent-binary.ts";

/**
 * The public agent installer (M7 install command): install.sh with this server's URL and the
 * binary's checksum and platform filled in. The values go inside single quotes in the script,
 * so they are restricted to characters that cannot end the quoting.
 */
export function installScript(serverUrl: string, binary: AgentBinaryInfo | null): string {
  const fill: Record<string, string> = {
    "@@SERVER_URL@@": serverUrl,
    "@@AGENT_SHA256@@": binary?.sha256 ?? "",
    "@@AGENT_PLATFORM@@": binary?.platform ?? "",
  };
  for (const [k, v] of Object.entries(fill)) if (!/^[A-Za-z0-9.:/\[\]_~-]*$/.test(v)) throw new Error(`install script: unsafe ${k} value`);
  return TEMPLATE.replace(/@@[A-Z_0-9]+@@/g, (k) => fill[k] ?? k);
}

/** Single-quoted for sh. */
const sq = (v: string) => `'${v.replaceAll("'", `'\\''`)}'`;

/** The one line an admin runs on a machine to install and enroll the agent for a site. */
export function installCommand(serverUrl: string, siteCode: string, enrollmentKey: string): string {
  return `curl -fsSL ${sq(`${serverUrl}/api/agent/install.sh`)} | sudo sh -s -- --site-code ${sq(siteCode)} --enrollment-key ${sq(enrollmentKey)}`;
}
