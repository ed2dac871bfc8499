import type { AppContext } from "../api/context.js";
import { storeTextBlob } from "../blobs/blobs.js";
import type { Db } from "../storage/types.js";
import { buildPayload, type PayloadSource } from "./payload.js";
import { normalizeCall, payloadSource } from "./service.js";
import { EVENT_OF } from "./transitions.js";

export interface TextContentInput {
  accountId: number;
  callId: number;
  kind: "transcript" | "summary";
  text: string;
  now: number;
  /** The event that carries the text when it is not the kind's own: `call.ended`'s brief summary. */
  event?: "call.ended";
}

/**
 * The `transcript`/`summary` content of an event (PRODUCT.md §5). Inline when the whole event
 * body stays within KLEN_INLINE_LIMIT; otherwise the text is stored as a blob and the event
 * carries `transcript_url`/`summary_url` instead — exactly one of the pair. The brief summary of
 * `call.ended` follows the same rule. The size is the exact size of the body that would be sent:
 * it is built here the same way emitEvent builds it (the call row is already updated by the
 * transition, and `now` is the event's time).
 */
export async function textContent(
  ctx: AppContext,
  trx: Db,
  input: TextContentInput,
): Promise<PayloadSource["content"]> {
  const inline = { [input.kind]: input.text };
  // Cheap exit: text far below the limit cannot push the body over it (the other fields of a
  // body are at most a few KiB: names ≤ 200 chars, contact, timestamps).
  if (Buffer.byteLength(input.text, "utf8") * 6 + 8192 < ctx.config.inlineLimit) return inline;
  const row = await trx
    .selectFrom("calls")
    .selectAll()
    .where("id", "=", input.callId)
    .where("account_id", "=", input.accountId)
    .executeTakeFirstOrThrow();
  const source = await payloadSource(trx, normalizeCall(row), inline, ctx.store.caps);
  const size = Buffer.byteLength(
    JSON.stringify(buildPayload(input.event ?? EVENT_OF[input.kind], source, input.now)),
    "utf8",
  );
  if (size <= ctx.config.inlineLimit) return inline;
  const url = await storeTextBlob(ctx, trx, input);
  return { [`${input.kind}_url`]: url };
}
