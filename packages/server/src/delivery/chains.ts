import { sql } from "kysely";
import type { Db } from "../storage/types.js";

/**
 * Makes due the first pending delivery of each (endpoint, call) chain in scope that is parked and
 * has no earlier pending delivery. Used after re-opening deliveries by hand (retry, recover), so
 * that re-opened events still go out one at a time, in their call's order, behind anything of the
 * same call that is still pending.
 */
export async function releaseChainHeads(
  trx: Db,
  scope: { endpointId: string; callId?: number },
  now: number,
): Promise<void> {
  const call = scope.callId === undefined ? sql`` : sql`AND call_id = ${scope.callId}`;
  await sql`
    UPDATE deliveries SET next_attempt_at = ${now}, updated_at = ${now}
    WHERE endpoint_id = ${scope.endpointId} ${call}
      AND status = 'pending' AND next_attempt_at IS NULL
      AND NOT EXISTS (
        SELECT 1 FROM deliveries e
        WHERE e.endpoint_id = deliveries.endpoint_id AND e.call_id = deliveries.call_id
          AND e.status = 'pending' AND e.event_seq < deliveries.event_seq)`.execute(trx);
}
