import type { FastifyInstance } from "fastify";
import type { RouteHelpers } from "../app.js";
import type { AppContext } from "../context.js";
import { accountRoutes } from "./account.js";
import { agentRoutes } from "./agents.js";
import { apiKeyRoutes } from "./api-keys.js";
import { blobRoutes } from "./blobs.js";
import { callRoutes } from "./calls.js";
import { contactRoutes } from "./contacts.js";
import { dashboardRoutes } from "./dashboard.js";
import { deliveryRoutes } from "./deliveries.js";
import { endpointRoutes } from "./endpoints.js";
import { eventRoutes } from "./events.js";
import { mediaRoutes } from "./media.js";
import { recordingRoutes } from "./recording.js";
import { recoverJobRoutes } from "./recover-jobs.js";
import { statsRoutes } from "./stats.js";
import { streamRoutes } from "./stream.js";
import { testCallRoutes } from "./test-calls.js";

export type RouteModule = (app: FastifyInstance, ctx: AppContext, h: RouteHelpers) => void | Promise<void>;

/** Every `/v1` route, one module per resource. Extra modules (blobs, test calls, streams) join here. */
export const routeModules: RouteModule[] = [
  accountRoutes,
  apiKeyRoutes,
  agentRoutes,
  contactRoutes,
  callRoutes,
  recordingRoutes,
  mediaRoutes,
  testCallRoutes,
  blobRoutes,
  endpointRoutes,
  recoverJobRoutes,
  eventRoutes,
  streamRoutes,
  deliveryRoutes,
  statsRoutes,
  dashboardRoutes,
];

export async function registerRoutes(app: FastifyInstance, ctx: AppContext, h: RouteHelpers): Promise<void> {
  for (const m of routeModules) await m(app, ctx, h);
}
