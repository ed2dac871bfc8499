import { recoverJobObject } from "../../delivery/recover.js";
import { notFound } from "../../errors.js";
import { listPage, pageQuery } from "../pagination.js";
import { idFilter, stringIdParam } from "./common.js";
import type { RouteModule } from "./index.js";

/**
 * The recovers too large to run in their request (`POST /v1/endpoints/{id}/recover` answered 202
 * with a `job_id`), which worker processes carry out in the background (delivery/recover.ts): what
 * became of each, `running` until it is `finished`, or `stopped` because its endpoint was disabled
 * or deleted, with how many deliveries it has re-queued. Kept for the retention period.
 */
export const recoverJobRoutes: RouteModule = (app, ctx) => {
  app.get(
    "/v1/recover-jobs",
    {
      schema: {
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            ...pageQuery,
            endpoint_id: idFilter("ep"),
          },
        },
      },
    },
    async (req) => {
      const q = req.query as { limit: number; cursor?: string; endpoint_id?: string };
      let sel = ctx.store.db.selectFrom("recover_jobs").selectAll().where("account_id", "=", req.account.id);
      if (q.endpoint_id) sel = sel.where("endpoint_id", "=", q.endpoint_id);
      return listPage(sel, q, "string", recoverJobObject, undefined, "rcv");
    },
  );

  app.get("/v1/recover-jobs/:id", { schema: { params: stringIdParam("rcv") } }, async (req) => {
    const id = (req.params as { id: string }).id;
    const job = await ctx.store.db
      .selectFrom("recover_jobs")
      .selectAll()
      .where("id", "=", id)
      .where("account_id", "=", req.account.id)
      .executeTakeFirst();
    if (!job) throw notFound("recover job", id);
    return recoverJobObject(job);
  });
};
