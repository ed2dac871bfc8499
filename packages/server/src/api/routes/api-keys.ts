import { addApiKey } from "../../accounts/accounts.js";
import { ApiError, notFound } from "../../errors.js";
import { hashApiKey, newApiKey } from "../../util/ids.js";
import { isoMillis } from "../../util/time.js";
import { bearerKey } from "../auth.js";
import { listPage, pageQuery } from "../pagination.js";
import { idParam } from "./common.js";
import type { RouteModule } from "./index.js";

/**
 * The account's API keys: list (prefixes only: a key is shown once, when it is made), create, and
 * revoke. Revoking takes effect at once in this process and within the authentication cache's few
 * seconds in the others (auth.ts); the account's last key cannot be revoked, so it never locks
 * itself out.
 */
export const apiKeyRoutes: RouteModule = (app, ctx, h) => {
  app.get(
    "/v1/api-keys",
    { schema: { querystring: { type: "object", additionalProperties: false, properties: pageQuery } } },
    async (req) => {
      // The route is authenticated, so the request carries a key.
      const current = hashApiKey(bearerKey(req)!);
      const sel = ctx.store.db
        .selectFrom("api_keys")
        .select(["id", "prefix", "key_hash", "created_at"])
        .where("account_id", "=", req.account.id);
      return listPage(sel, req.query as { limit: number; cursor?: string }, "int", (k) => ({
        id: Number(k.id),
        prefix: k.prefix,
        created_at: isoMillis(Number(k.created_at)),
        current: k.key_hash === current,
      }));
    },
  );

  app.post("/v1/api-keys", (req, reply) =>
    h.mutate(req, reply, async (trx) => {
      const key = newApiKey();
      const now = ctx.clock.now();
      const made = { ...(await addApiKey(trx, req.account.id, key, now)), created_at: isoMillis(now) };
      // Keys are kept only hashed: an Idempotency-Key replay says which key was made, not the key.
      return { status: 201, body: { ...made, key }, replayBody: { ...made, key: null } };
    }),
  );

  app.delete("/v1/api-keys/:id", { schema: { params: idParam } }, async (req, reply) => {
    await h.mutate(req, reply, async (trx) => {
      const id = (req.params as { id: number }).id;
      const keys = await trx
        .selectFrom("api_keys")
        .select(["id", "prefix", "key_hash"])
        .where("account_id", "=", req.account.id)
        // Two revocations at once must not both see a second key left (SQLite: one writer).
        .$if(ctx.store.caps.rowLocks, (q) => q.forUpdate())
        .execute();
      const key = keys.find((k) => Number(k.id) === id);
      if (!key) throw notFound("api key", String(id));
      if (keys.length === 1)
        throw new ApiError(409, "last_api_key", "this is the account's only API key; create another first", {
          id,
        });
      await trx.deleteFrom("api_keys").where("id", "=", id).execute();
      // Kept, so that a process started again with it as KLEN_API_KEY does not add it back.
      await trx
        .insertInto("revoked_api_keys")
        .values({ key_hash: key.key_hash, account_id: req.account.id, revoked_at: ctx.clock.now() })
        .onConflict((oc) => oc.column("key_hash").doNothing())
        .execute();
      return { status: 200, body: { id, prefix: key.prefix, deleted: true } };
    });
    // After the commit: a lookup between the delete and the commit would cache the key again.
    if (reply.statusCode === 200) h.forgetKeys(req.account.id);
    return reply;
  });
};
