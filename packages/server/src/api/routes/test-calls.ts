import { FAILURE_REASONS } from "@klen/webhooks/schemas";
import { newCallRow } from "../../calls/service.js";
import { ApiError, badRequest } from "../../errors.js";
import { type Outcome, runTestCall } from "../../simulator/run.js";
import type { Db } from "../../storage/types.js";
import { randomToken } from "../../util/ids.js";
import { findAgent } from "./agents.js";
import { assertSending } from "./endpoints.js";
import type { RouteModule } from "./index.js";

/**
 * Test calls of one account running at once, at most. A test call is a request of a few bytes that
 * makes the server write a transcript (up to KLEN_MAX_BODY), a recording and a summary: without a
 * bound, one key could fill the disk every account shares.
 */
export const MAX_TEST_CALLS_RUNNING = 20;

const TEST_AGENT = "Test Agent";

/** The agent of a test call: the one named, else the account's "Test Agent" (created once). */
async function testAgent(trx: Db, accountId: number, agentId: number | undefined, now: number) {
  if (agentId !== undefined) {
    const a = await findAgent(trx, accountId, agentId).catch(() => {
      throw badRequest("agent_id", `agent ${agentId} not found`);
    });
    return { id: Number(a.id), name: a.name };
  }
  const find = () =>
    trx
      .selectFrom("agents")
      .select(["id", "name"])
      .where("account_id", "=", accountId)
      .where("name", "=", TEST_AGENT)
      .where("deleted_at", "is", null)
      .orderBy("id")
      .executeTakeFirst();
  // Two first test calls at once do not both create it: the caller holds the account row's lock
  // (assertRoomForTestCall, PostgreSQL), and SQLite has one writer at a time.
  const found = await find();
  if (found) return { id: Number(found.id), name: found.name };
  const made = await trx
    .insertInto("agents")
    .values({ account_id: accountId, name: TEST_AGENT, assistant_id: "assistant_test", created_at: now })
    .returning(["id", "name"])
    .executeTakeFirstOrThrow();
  return { id: Number(made.id), name: made.name };
}

/**
 * Refuses a test call while MAX_TEST_CALLS_RUNNING of the account's are running: `429`, which the
 * Idempotency-Key does not keep (a repeat goes through once there is room). Counted under the
 * account row's lock on PostgreSQL, so requests racing each other cannot all see room (60 at
 * once all got in); SQLite has one writer at a time.
 */
async function assertRoomForTestCall(trx: Db, accountId: number, rowLocks: boolean): Promise<void> {
  if (rowLocks)
    await trx.selectFrom("accounts").select("id").where("id", "=", accountId).forNoKeyUpdate().execute();
  const running = await trx
    .selectFrom("test_call_runs")
    .select((eb) => eb.fn.countAll<number>().as("n"))
    .where("account_id", "=", accountId)
    .executeTakeFirstOrThrow();
  if (Number(running.n) >= MAX_TEST_CALLS_RUNNING) {
    throw new ApiError(
      429,
      "too_many_test_calls",
      `${MAX_TEST_CALLS_RUNNING} test calls of this account are still running; try again when one has finished`,
      { retry_after: 5 },
    );
  }
}

/**
 * `POST /v1/test-calls` → 202 `{call_id}` (PRODUCT.md §4, §6): creates an outbound call and
 * drives it through the workflow in the background (src/simulator/run.ts). With `endpoint_id`
 * its events go to that endpoint only. The background run starts only after the creating
 * transaction committed, and not for a replayed Idempotency-Key; its errors are logged, never
 * thrown into the process. The run is recorded and leased in that transaction
 * (`test_call_runs`): if this process dies mid-run, a worker process carries it on once the lease
 * runs out (`testCallResumer`).
 */
export const testCallRoutes: RouteModule = (app, ctx, h) => {
  app.post(
    "/v1/test-calls",
    {
      // Every field is optional, so a bodiless POST (no content-type) means `{}`; a JSON `null` is
      // not an object, and is refused as any other body that is not one.
      preValidation: async (req) => {
        if (req.body === undefined) req.body = {};
      },
      schema: {
        body: {
          type: "object",
          additionalProperties: false,
          properties: {
            agent_id: { type: "integer", minimum: 1 },
            outcome: { type: "string", enum: ["completed", ...FAILURE_REASONS] },
            endpoint_id: { type: "string", minLength: 1, maxLength: 100 },
            // No larger than a transcript the API itself takes (POST …/transcript, KLEN_MAX_BODY).
            transcript_bytes: { type: "integer", minimum: 1, maximum: ctx.config.maxBody },
          },
        },
      },
    },
    async (req, reply) => {
      const b = (req.body ?? {}) as {
        agent_id?: number;
        outcome?: Outcome;
        endpoint_id?: string;
        transcript_bytes?: number;
      };
      const accountId = req.account.id;
      const outcome: Outcome = b.outcome ?? "completed";
      let agentName = TEST_AGENT;
      let created: number | undefined;
      let lease = 0;
      await h.mutate(req, reply, async (trx) => {
        const now = ctx.clock.now();
        await assertRoomForTestCall(trx, accountId, ctx.store.caps.rowLocks);
        if (b.endpoint_id !== undefined) {
          const ep = await trx
            .selectFrom("endpoints")
            .select(["id", "disabled", "disabled_reason"])
            .where("id", "=", b.endpoint_id)
            .where("account_id", "=", accountId)
            .where("deleted_at", "is", null)
            .executeTakeFirst();
          if (!ep) throw badRequest("endpoint_id", `endpoint ${b.endpoint_id} not found`);
          // It would get none of the call's events: a 202 would promise a test that sends nothing.
          assertSending(ep);
        }
        const agent = await testAgent(trx, accountId, b.agent_id, now);
        agentName = agent.name;
        const call = await trx
          .insertInto("calls")
          .values(
            newCallRow({
              accountId,
              agentId: agent.id,
              type: "outbound",
              // 555-01xx numbers are reserved for fiction; E.164 all the same.
              phoneNumber: `+1555010${String(Math.floor(Math.random() * 10000)).padStart(4, "0")}`,
              contactId: null,
              klenCallId: `call_test_${randomToken(9)}`,
              onlyEndpointId: b.endpoint_id ?? null,
              now,
            }),
          )
          .returning("id")
          .executeTakeFirstOrThrow();
        created = Number(call.id);
        // The run itself, leased to this process: should it die mid-run, another carries it on.
        lease = now + ctx.config.leaseMs;
        await trx
          .insertInto("test_call_runs")
          .values({
            call_id: created,
            account_id: accountId,
            agent_name: agentName,
            outcome,
            transcript_bytes: b.transcript_bytes ?? null,
            attempts: 0, // failures of the run so far (MAX_RUN_ATTEMPTS); a takeover after a crash is none
            takeovers: 0,
            leased_until: lease,
            created_at: now,
          })
          .execute();
        return { status: 202, body: { call_id: created } };
      });
      if (reply.statusCode === 202 && reply.getHeader("idempotent-replayed") === undefined && created) {
        const plan = {
          accountId,
          callId: created,
          agentName,
          outcome,
          ...(b.transcript_bytes !== undefined ? { transcriptBytes: b.transcript_bytes } : {}),
        };
        setImmediate(() => {
          runTestCall(ctx, plan, lease).catch((err: unknown) =>
            ctx.log.error(
              { component: "simulator", call_id: plan.callId, err },
              "test call failed; it is tried again when its lease runs out",
            ),
          );
        });
      }
      return reply;
    },
  );
};
