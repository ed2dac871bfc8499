import { EVENT_TYPES } from "@klen/webhooks/schemas";
import type { Selectable } from "kysely";
import { notFound } from "../../errors.js";
import type { Database } from "../../storage/schema.js";
import { isoMillis } from "../../util/time.js";
import { idRange, listPage, pageQuery, type TimeRange, timeQuery } from "../pagination.js";
import { INT32_MAX, stringIdParam } from "./common.js";
import type { RouteModule } from "./index.js";

type EventRow = Selectable<Database["events"]>;
export const eventObject = (e: EventRow) => ({
  id: e.id,
  event_type: e.event_type,
  call_id: Number(e.call_id),
  payload: JSON.parse(e.payload) as unknown,
  created_at: isoMillis(Number(e.created_at)),
});

export const eventRoutes: RouteModule = (app, ctx) => {
  app.get(
    "/v1/events",
    {
      schema: {
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            ...pageQuery,
            ...timeQuery,
            event_type: { type: "string", enum: EVENT_TYPES },
            call_id: { type: "integer", minimum: 1, maximum: INT32_MAX },
          },
        },
      },
    },
    async (req) => {
      const q = req.query as TimeRange & {
        limit: number;
        cursor?: string;
        event_type?: string;
        call_id?: number;
      };
      let sel = ctx.store.db.selectFrom("events").selectAll().where("account_id", "=", req.account.id);
      if (q.event_type) sel = sel.where("event_type", "=", q.event_type);
      if (q.call_id) sel = sel.where("call_id", "=", q.call_id);
      return listPage(sel, q, "string", eventObject, idRange("evt", q));
    },
  );

  app.get("/v1/events/:id", { schema: { params: stringIdParam("evt") } }, async (req) => {
    const id = (req.params as { id: string }).id;
    const row = await ctx.store.db
      .selectFrom("events")
      .selectAll()
      .where("id", "=", id)
      .where("account_id", "=", req.account.id)
      .executeTakeFirst();
    if (!row) throw notFound("event", id);
    return eventObject(row);
  });
};
