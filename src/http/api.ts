import { Elysia } from "elysia";
import { requestContext } from "./context.ts";
import type { AppDeps } from "./deps.ts";
import { apiDocs } from "./docs.ts";
import { agentDistRoutes } from "./routes/agent-dist.ts";
import { actorRoutes } from "./routes/actors.ts";
import { auditRoutes } from "./routes/audit.ts";
import { authRoutes } from "./routes/auth.ts";
import { enrollRoutes } from "./routes/enroll.ts";
import { grantRoutes } from "./routes/grants.ts";
import { machineRoutes } from "./routes/machines.ts";
import { recordingRoutes } from "./routes/recordings.ts";
import { roomRoutes } from "./routes/rooms.ts";
import { settingsRoutes } from "./routes/settings.ts";
import { siteRoutes } from "./routes/sites.ts";
import { tokenRoutes } from "./routes/tokens.ts";
import { userRoutes } from "./routes/users.ts";
import { sessionRoutes } from "./routes/sessions.ts";
import { supportCodeRoutes } from "./routes/support-codes.ts";
import { agentSocket } from "./ws/agent.ts";
import { roomSocket } from "./ws/rooms.ts";
import { supportSocket } from "./ws/support.ts";
import { viewerSocket } from "./ws/viewer.ts";

/** The HTTP API: one plugin per area, each with its schemas next to its routes. */
export const api = (deps: AppDeps) =>
  new Elysia()
    .use(apiDocs())
    .use(requestContext(deps))
    .use(authRoutes(deps))
    .use(userRoutes(deps))
    .use(tokenRoutes(deps))
    .use(settingsRoutes(deps))
    .use(siteRoutes(deps))
    .use(enrollRoutes(deps))
    .use(agentDistRoutes(deps))
    .use(machineRoutes(deps))
    .use(grantRoutes(deps))
    .use(auditRoutes(deps))
    .use(recordingRoutes(deps))
    .use(sessionRoutes(deps))
    .use(supportCodeRoutes(deps))
    .use(roomRoutes(deps))
    .use(actorRoutes(deps))
    .use(agentSocket(deps))
    .use(supportSocket(deps))
    .use(viewerSocket(deps))
    .use(roomSocket(deps));
