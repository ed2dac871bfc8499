import { createHash } from "node:crypto";
import { ApiError } from "../errors.js";
import { retryConflicts } from "../storage/retry.js";
import type { Store } from "../storage/store.js";
import type { Db } from "../storage/types.js";

/** A stored response is replayed to repeats of the same request for this long. */
export const IDEMPOTENCY_TTL_MS = 24 * 3_600_000;

export interface Outcome {
  status: number;
  body: unknown;
  /** What a replay answers instead of `body`, when the body holds what must not be kept (a new API key). */
  replayBody?: unknown;
}

export interface IdempotentRequest {
  accountId: number;
  key: string | undefined;
  method: string;
  path: string;
  /** Digest of the body's canonical form (or of the upload's bytes), so a changed request is told apart. */
  bodyDigest: string;
  /**
   * Digest of a JSON body in the order its fields were sent, when that differs from the canonical
   * form: keys stored before requests were compared by their fields (not their order) hold it.
   */
  bodyDigestAsSent?: string;
}

export function digest(body: string | Buffer | undefined): string {
  return createHash("sha256")
    .update(body ?? "")
    .digest("hex");
}

/**
 * JSON text of a parsed body with every object's fields in sorted order, so that a repeat which
 * sends the same fields in another order is the same request (as Stripe compares parameters, not
 * bytes). Arrays keep their order: it is part of the value.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const fields = Object.keys(value)
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
  return `{${fields.join(",")}}`;
}

/**
 * Runs a state-changing request in one transaction with its idempotency record (PRODUCT.md §4).
 * The first non-5xx outcome is stored in the same transaction as the change it describes, so a
 * key exists exactly when its change happened. A repeat of the same method, path and body gets
 * the stored outcome and changes nothing; the same key on a different request is a 422.
 * ApiErrors (4xx) are outcomes too: they are stored and replayed, and their transaction commits
 * nothing else because the handler throws before writing.
 */
export async function runIdempotent(
  store: Store,
  req: IdempotentRequest,
  handler: (trx: Db) => Promise<Outcome>,
  now = Date.now(),
): Promise<Outcome & { replayed: boolean }> {
  if (req.key === undefined) {
    const out = await retryConflicts(() => store.db.transaction().execute(handler));
    return { ...out, replayed: false };
  }
  if (req.key.length === 0 || req.key.length > 255) {
    throw new ApiError(400, "invalid_request", "Idempotency-Key must be 1 to 255 characters", {
      field: "Idempotency-Key",
    });
  }
  const key = req.key;
  // Keyed when the database is encrypted: the stored hash then tells nothing of the body.
  // The body's canonical digest first, then (when it differs) its digest in sent order, which a
  // version that compared bodies that way stored (keys live 24 h).
  const fingerprints = [req.bodyDigest, req.bodyDigestAsSent]
    .filter((b) => b !== undefined)
    .map((b) => `${req.method} ${req.path}\n${b}`);
  const hashOf = (f: string) => (store.cipher ? store.cipher.mac(f) : digest(f));
  const requestHash = hashOf(fingerprints[0]!);
  // A key stored before KLEN_ENCRYPTION_KEY was set holds the plain hash: its repeat still matches.
  const sameRequest = (stored: string) =>
    fingerprints.some((f) => stored === hashOf(f) || (store.cipher !== undefined && stored === digest(f)));
  const attempt = () =>
    store.db.transaction().execute(async (trx) => {
      const prior = await trx
        .selectFrom("idempotency_keys")
        .selectAll()
        .where("account_id", "=", req.accountId)
        .where("key", "=", key)
        .executeTakeFirst();
      if (prior && Number(prior.created_at) > now - IDEMPOTENCY_TTL_MS) {
        if (!sameRequest(prior.request_hash)) {
          throw new ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
            {
              field: "Idempotency-Key",
            },
          );
        }
        return { status: prior.status_code, body: JSON.parse(prior.response_body), replayed: true };
      }
      if (prior)
        await trx
          .deleteFrom("idempotency_keys")
          .where("account_id", "=", req.accountId)
          .where("key", "=", key)
          .execute();
      let out: Outcome;
      try {
        out = await handler(trx);
      } catch (err) {
        // A 429 (too many test calls running) is no outcome either: its answer is "later", and a
        // repeat of the request must then go through.
        if (!(err instanceof ApiError) || err.status >= 500 || err.status === 429) throw err;
        out = { status: err.status, body: err.toJSON() };
      }
      if (out.status < 500) {
        await trx
          .insertInto("idempotency_keys")
          .values({
            account_id: req.accountId,
            key,
            method: req.method,
            path: req.path,
            request_hash: requestHash,
            status_code: out.status,
            response_body: JSON.stringify(out.replayBody ?? out.body),
            created_at: now,
          })
          .execute();
      }
      return { ...out, replayed: false };
    });
  try {
    return await retryConflicts(attempt);
  } catch (err) {
    // Two requests with one key raced: the loser's insert hit the primary key and rolled back
    // everything it did. Running again finds the winner's record and replays it.
    if (store.isUniqueViolation(err)) return retryConflicts(attempt);
    throw err;
  }
}
