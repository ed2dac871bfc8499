import type { AppContext } from "../api/context.js";
import type { Db } from "../storage/types.js";
import type { PayloadSource } from "./payload.js";

export interface TextContentInput {
  accountId: number;
  callId: number;
  kind: "transcript" | "summary";
  text: string;
  now: number;
}

/**
 * The `transcript`/`summary` content of an event. Inline for now; the large-payload work moves
 * text past `KLEN_INLINE_LIMIT` behind a pre-signed `*_url`.
 */
export async function textContent(
  _ctx: AppContext,
  _trx: Db,
  input: TextContentInput,
): Promise<PayloadSource["content"]> {
  return { [input.kind]: input.text };
}
