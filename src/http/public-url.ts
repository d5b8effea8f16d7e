import type { Config } from "../config.ts";

/**
 * The URL to give agents and installers: TETHER_PUBLIC_URL when the server sits behind a proxy
 * or a name of its own, else the origin the caller reached this server at (what a machine on
 * the caller's network would use).
 */
export const publicUrl = (config: Pick<Config, "publicUrl">, request: Request) => config.publicUrl ?? new URL(request.url).origin;
