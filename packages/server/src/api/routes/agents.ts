import type { Selectable } from "kysely";
import { notFound } from "../../errors.js";
import type { Database } from "../../storage/schema.js";
import type { Db } from "../../storage/types.js";
import { isoMillis } from "../../util/time.js";
import { listPage, pageQuery } from "../pagination.js";
import { idParam } from "./common.js";
import type { RouteModule } from "./index.js";

type AgentRow = Selectable<Database["agents"]>;
const agentObject = (a: AgentRow) => ({
  id: Number(a.id),
  name: a.name,
  assistant_id: a.assistant_id,
  created_at: isoMillis(Number(a.created_at)),
});

const agentBody = (required: boolean) =>
  ({
    type: "object",
    additionalProperties: false,
    ...(required ? { required: ["name"] } : {}),
    properties: {
      name: { type: "string", minLength: 1, maxLength: 200 },
      assistant_id: { type: ["string", "null"], maxLength: 200 },
    },
  }) as const;

export async function findAgent(db: Db, accountId: number, id: number): Promise<AgentRow> {
  const a = await db
    .selectFrom("agents")
    .selectAll()
    .where("id", "=", id)
    .where("account_id", "=", accountId)
    .where("deleted_at", "is", null)
    .executeTakeFirst();
  if (!a) throw notFound("agent", id);
  return a;
}

export const agentRoutes: RouteModule = (app, ctx, h) => {
  app.post("/v1/agents", { schema: { body: agentBody(true) } }, (req, reply) =>
    h.mutate(req, reply, async (trx) => {
      const b = req.body as { name: string; assistant_id?: string | null };
      const row = await trx
        .insertInto("agents")
        .values({
          account_id: req.account.id,
          name: b.name,
          assistant_id: b.assistant_id ?? null,
          created_at: ctx.clock.now(),
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      return { status: 201, body: agentObject(row) };
    }),
  );

  app.get(
    "/v1/agents",
    { schema: { querystring: { type: "object", additionalProperties: false, properties: pageQuery } } },
    async (req) => {
      const q = req.query as { limit: number; cursor?: string };
      const sel = ctx.store.db
        .selectFrom("agents")
        .selectAll()
        .where("account_id", "=", req.account.id)
        .where("deleted_at", "is", null);
      return listPage(sel, q, "int", agentObject);
    },
  );

  app.get("/v1/agents/:id", { schema: { params: idParam } }, async (req) =>
    agentObject(await findAgent(ctx.store.db, req.account.id, (req.params as { id: number }).id)),
  );

  app.patch("/v1/agents/:id", { schema: { params: idParam, body: agentBody(false) } }, (req, reply) =>
    h.mutate(req, reply, async (trx) => {
      const id = (req.params as { id: number }).id;
      await findAgent(trx, req.account.id, id);
      const b = req.body as { name?: string; assistant_id?: string | null };
      const set: Partial<AgentRow> = {};
      if (b.name !== undefined) set.name = b.name;
      if (b.assistant_id !== undefined) set.assistant_id = b.assistant_id;
      if (Object.keys(set).length > 0)
        await trx.updateTable("agents").set(set).where("id", "=", id).execute();
      return { status: 200, body: agentObject(await findAgent(trx, req.account.id, id)) };
    }),
  );

  app.delete("/v1/agents/:id", { schema: { params: idParam } }, (req, reply) =>
    h.mutate(req, reply, async (trx) => {
      const id = (req.params as { id: number }).id;
      const a = await findAgent(trx, req.account.id, id);
      // Soft delete: past calls and their events still name the agent.
      await trx.updateTable("agents").set({ deleted_at: ctx.clock.now() }).where("id", "=", id).execute();
      return { status: 200, body: { ...agentObject(a), deleted: true } };
    }),
  );
};
