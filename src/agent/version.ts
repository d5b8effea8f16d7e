/** The agent's version, reported in hello and in the inventory. */
export const AGENT_VERSION = "0.1.0";
