import type { Selectable } from "kysely";
import { notFound } from "../../errors.js";
import type { Database } from "../../storage/schema.js";
import type { Db } from "../../storage/types.js";
import { isoMillis } from "../../util/time.js";
import { listPage, pageQuery } from "../pagination.js";
import { e164, idParam } from "./common.js";
import type { RouteModule } from "./index.js";

type ContactRow = Selectable<Database["contacts"]>;
const contactObject = (c: ContactRow) => ({
  id: Number(c.id),
  name: c.name,
  email: c.email,
  phone_number: c.phone_number,
  created_at: isoMillis(Number(c.created_at)),
});

const contactBody = (required: boolean) =>
  ({
    type: "object",
    additionalProperties: false,
    ...(required ? { required: ["name"] } : {}),
    properties: {
      name: { type: "string", minLength: 1, maxLength: 200 },
      email: { type: ["string", "null"], maxLength: 320, pattern: "^[^\\s@]+@[^\\s@]+$" },
      phone_number: { anyOf: [e164, { type: "null" }] },
    },
  }) as const;

export async function findContact(db: Db, accountId: number, id: number): Promise<ContactRow> {
  const c = await db
    .selectFrom("contacts")
    .selectAll()
    .where("id", "=", id)
    .where("account_id", "=", accountId)
    .where("deleted_at", "is", null)
    .executeTakeFirst();
  if (!c) throw notFound("contact", id);
  return c;
}

export const contactRoutes: RouteModule = (app, ctx, h) => {
  app.post("/v1/contacts", { schema: { body: contactBody(true) } }, (req, reply) =>
    h.mutate(req, reply, async (trx) => {
      const b = req.body as { name: string; email?: string | null; phone_number?: string | null };
      const row = await trx
        .insertInto("contacts")
        .values({
          account_id: req.account.id,
          name: b.name,
          email: b.email ?? null,
          phone_number: b.phone_number ?? null,
          created_at: ctx.clock.now(),
        })
        .returningAll()
        .executeTakeFirstOrThrow();
      return { status: 201, body: contactObject(row) };
    }),
  );

  app.get(
    "/v1/contacts",
    { schema: { querystring: { type: "object", additionalProperties: false, properties: pageQuery } } },
    async (req) => {
      const q = req.query as { limit: number; cursor?: string };
      const sel = ctx.store.db
        .selectFrom("contacts")
        .selectAll()
        .where("account_id", "=", req.account.id)
        .where("deleted_at", "is", null);
      return listPage(sel, q, "int", contactObject);
    },
  );

  app.get("/v1/contacts/:id", { schema: { params: idParam } }, async (req) =>
    contactObject(await findContact(ctx.store.db, req.account.id, (req.params as { id: number }).id)),
  );

  app.patch("/v1/contacts/:id", { schema: { params: idParam, body: contactBody(false) } }, (req, reply) =>
    h.mutate(req, reply, async (trx) => {
      const id = (req.params as { id: number }).id;
      await findContact(trx, req.account.id, id);
      const b = req.body as { name?: string; email?: string | null; phone_number?: string | null };
      const set: Partial<ContactRow> = {};
      if (b.name !== undefined) set.name = b.name;
      if (b.email !== undefined) set.email = b.email;
      if (b.phone_number !== undefined) set.phone_number = b.phone_number;
      if (Object.keys(set).length > 0)
        await trx.updateTable("contacts").set(set).where("id", "=", id).execute();
      return { status: 200, body: contactObject(await findContact(trx, req.account.id, id)) };
    }),
  );

  app.delete("/v1/contacts/:id", { schema: { params: idParam } }, (req, reply) =>
    h.mutate(req, reply, async (trx) => {
      const id = (req.params as { id: number }).id;
      const c = await findContact(trx, req.account.id, id);
      await trx.updateTable("contacts").set({ deleted_at: ctx.clock.now() }).where("id", "=", id).execute();
      return { status: 200, body: { ...contactObject(c), deleted: true } };
    }),
  );
};
