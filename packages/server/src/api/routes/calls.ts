import { FAILURE_REASONS } from "@klen/webhooks/schemas";
import { textContent } from "../../calls/content.js";
import { applyTransition, callObject, newCallRow, normalizeCall } from "../../calls/service.js";
import type { Action, TransitionInput } from "../../calls/transitions.js";
import { badRequest, notFound } from "../../errors.js";
import { enqueueIfAutoSummary } from "../../summaries/jobs.js";
import { parseIso } from "../../util/time.js";
import { listPage, pageQuery } from "../pagination.js";
import { findAgent } from "./agents.js";
import { e164, INT32_MAX, idParam, isoTimestamp, NOT_BLANK } from "./common.js";
import { findContact } from "./contacts.js";
import type { RouteModule } from "./index.js";

const obj = (properties: Record<string, unknown>, required: string[] = []) =>
  ({ type: "object", additionalProperties: false, required, properties }) as const;

/** How far ahead of this server's clock a reported time may be (the caller's clock may run ahead). */
const CLOCK_SKEW_MS = 5 * 60_000;

function time(field: string, value: string | undefined, now: number): number | undefined {
  if (value === undefined) return undefined;
  const ms = parseIso(value);
  if (ms === undefined) throw badRequest(field, `"${field}" is not an ISO-8601 timestamp`);
  if (ms > now + CLOCK_SKEW_MS) throw badRequest(field, `"${field}" is in the future`);
  return ms;
}

/** The bodies of the lifecycle steps (PRODUCT.md §6). */
const stepBodies: Record<Exclude<Action, "recording">, ReturnType<typeof obj>> = {
  start: obj({ started_at: isoTimestamp, assistant_id: { type: ["string", "null"], maxLength: 200 } }),
  end: obj({ ended_at: isoTimestamp, summary: { type: "string", maxLength: 100_000 } }),
  fail: obj(
    {
      failure_reason: { type: "string", enum: FAILURE_REASONS },
      ended_reason: { type: "string", minLength: 1, maxLength: 500 },
      ended_at: isoTimestamp,
    },
    ["failure_reason"],
  ),
  // Not blank: nothing could be summarized from it (the summary job failed for hours), and a blank
  // call.summary says nothing.
  transcript: obj({ transcript: { type: "string", minLength: 1, pattern: NOT_BLANK } }, ["transcript"]),
  summary: obj({ summary: { type: "string", minLength: 1, pattern: NOT_BLANK } }, ["summary"]),
};

export const callRoutes: RouteModule = (app, ctx, h) => {
  app.post(
    "/v1/calls",
    {
      schema: {
        body: obj(
          {
            agent_id: { type: "integer", minimum: 1 },
            type: { type: "string", enum: ["inbound", "outbound"] },
            phone_number: e164,
            contact_id: { type: ["integer", "null"], minimum: 1 },
            klen_call_id: { type: ["string", "null"], minLength: 1, maxLength: 200 },
          },
          ["agent_id", "type", "phone_number"],
        ),
      },
    },
    (req, reply) =>
      h.mutate(req, reply, async (trx) => {
        const b = req.body as {
          agent_id: number;
          type: string;
          phone_number: string;
          contact_id?: number | null;
          klen_call_id?: string | null;
        };
        const accountId = req.account.id;
        await findAgent(trx, accountId, b.agent_id).catch(() => {
          throw badRequest("agent_id", `agent ${b.agent_id} not found`);
        });
        let contactId: number | null = null;
        if (b.contact_id != null) {
          await findContact(trx, accountId, b.contact_id).catch(() => {
            throw badRequest("contact_id", `contact ${b.contact_id} not found`);
          });
          contactId = b.contact_id;
        } else {
          // A call is linked to the account's contact with the same phone number, if there is one
          // (sealed or, stored before KLEN_ENCRYPTION_KEY was set, still in clear: encryption.ts).
          const match = await trx
            .selectFrom("contacts")
            .select("id")
            .where("account_id", "=", accountId)
            .where("phone_number", "=", b.phone_number)
            .where("deleted_at", "is", null)
            .orderBy("id", "asc")
            .executeTakeFirst();
          contactId = match ? Number(match.id) : null;
        }
        const now = ctx.clock.now();
        const row = await trx
          .insertInto("calls")
          .values(
            newCallRow({
              accountId,
              agentId: b.agent_id,
              type: b.type,
              phoneNumber: b.phone_number,
              contactId,
              klenCallId: b.klen_call_id ?? null,
              now,
            }),
          )
          .returningAll()
          .executeTakeFirstOrThrow();
        return { status: 201, body: callObject(normalizeCall(row)) };
      }),
  );

  app.get(
    "/v1/calls",
    {
      schema: {
        querystring: {
          type: "object",
          additionalProperties: false,
          properties: {
            ...pageQuery,
            status: { type: "string", enum: ["queued", "in-progress", "completed", "failed"] },
            agent_id: { type: "integer", minimum: 1, maximum: INT32_MAX },
          },
        },
      },
    },
    async (req) => {
      const q = req.query as { limit: number; cursor?: string; status?: string; agent_id?: number };
      let sel = ctx.store.db.selectFrom("calls").selectAll().where("account_id", "=", req.account.id);
      if (q.status) sel = sel.where("status", "=", q.status);
      if (q.agent_id) sel = sel.where("agent_id", "=", q.agent_id);
      return listPage(sel, q, "int", (r) => callObject(normalizeCall(r)));
    },
  );

  app.get("/v1/calls/:id", { schema: { params: idParam } }, async (req) => {
    const id = (req.params as { id: number }).id;
    const row = await ctx.store.db
      .selectFrom("calls")
      .selectAll()
      .where("id", "=", id)
      .where("account_id", "=", req.account.id)
      .executeTakeFirst();
    if (!row) throw notFound("call", id);
    return callObject(normalizeCall(row));
  });

  for (const action of Object.keys(stepBodies) as Array<keyof typeof stepBodies>) {
    app.post(
      `/v1/calls/:id/${action}`,
      { schema: { params: idParam, body: stepBodies[action] } },
      (req, reply) =>
        h.mutate(
          req,
          reply,
          async (trx) => {
            const id = (req.params as { id: number }).id;
            const b = (req.body ?? {}) as Record<string, string | undefined>;
            const now = ctx.clock.now();
            const input: TransitionInput = { now };
            const startedAt = time("started_at", b.started_at, now);
            const endedAt = time("ended_at", b.ended_at, now);
            if (startedAt !== undefined) input.started_at = startedAt;
            if (endedAt !== undefined) input.ended_at = endedAt;
            if (b.assistant_id !== undefined) input.assistant_id = b.assistant_id;
            // A blank brief summary is none: `call.ended` omits the field rather than carry "".
            if (action === "end" && b.summary !== undefined && b.summary.trim() !== "")
              input.summary = b.summary;
            if (b.failure_reason !== undefined)
              input.failure_reason = b.failure_reason as TransitionInput["failure_reason"] & string;
            if (b.ended_reason !== undefined) input.ended_reason = b.ended_reason;
            const text = (kind: "transcript" | "summary", value: string, event?: "call.ended") => () =>
              textContent(ctx, trx, {
                accountId: req.account.id,
                callId: id,
                kind,
                text: value,
                now,
                ...(event ? { event } : {}),
              });
            const contentFor =
              action === "transcript" || action === "summary"
                ? text(action, b[action]!)
                : input.summary !== undefined
                  ? text("summary", input.summary, "call.ended")
                  : undefined;
            const { call } = await applyTransition(
              trx,
              ctx.store.caps,
              req.account.id,
              id,
              action,
              input,
              contentFor,
            );
            // With auto-summary on, the transcript's transaction also queues its summary (§5).
            if (action === "transcript")
              await enqueueIfAutoSummary(trx, {
                accountId: req.account.id,
                callId: id,
                transcript: b.transcript!,
                now,
              });
            return { status: 200, body: callObject(call) };
          },
          { work: true },
        ),
    );
  }
};
