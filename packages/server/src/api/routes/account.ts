import { toAccount } from "../../accounts/accounts.js";
import type { Db } from "../../storage/types.js";
import type { RouteModule } from "./index.js";

const readAccount = async (db: Db, id: number) =>
  toAccount(
    await db
      .selectFrom("accounts")
      .select(["id", "name", "auto_summary"])
      .where("id", "=", id)
      .executeTakeFirstOrThrow(),
  );

export const accountRoutes: RouteModule = (app, ctx, h) => {
  app.get("/v1/account", async (req) => readAccount(ctx.store.db, req.account.id));

  app.patch(
    "/v1/account",
    {
      schema: {
        body: {
          type: "object",
          additionalProperties: false,
          properties: {
            name: { type: "string", minLength: 1, maxLength: 200 },
            auto_summary: { type: "boolean" },
          },
        },
      },
    },
    (req, reply) =>
      h.mutate(req, reply, async (trx) => {
        const body = req.body as { name?: string; auto_summary?: boolean };
        const set: { name?: string; auto_summary?: number } = {};
        if (body.name !== undefined) set.name = body.name;
        if (body.auto_summary !== undefined) set.auto_summary = body.auto_summary ? 1 : 0;
        if (Object.keys(set).length > 0)
          await trx.updateTable("accounts").set(set).where("id", "=", req.account.id).execute();
        return { status: 200, body: await readAccount(trx, req.account.id) };
      }),
  );
};
