import { Elysia } from "elysia";
import type { AppDeps } from "../deps.ts";

// Placeholder while this area is being written.
export const machineRoutes = (_deps: AppDeps) => new Elysia({ name: "machines" });
