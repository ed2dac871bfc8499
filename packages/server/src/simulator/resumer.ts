import type { AppContext } from "../api/context.js";
import { logBackgroundFailure } from "../log.js";
import { Periodic } from "../util/periodic.js";
import { resumeDueTestCalls } from "./run.js";

/** How often worker processes look for interrupted test calls. */
const POLL_MS = 1_000;

/**
 * Carries on test calls whose run was interrupted (the process running it died): in worker
 * processes (roles `all` and `worker`), a look every second for runs whose lease has run out.
 * A failed round is logged; the next one tries again. Stopping waits for the run in hand (one
 * interrupted by exit is handed over: `handOverTestCalls`).
 */
export function testCallResumer(ctx: AppContext): Periodic {
  return new Periodic(
    (stopped) =>
      resumeDueTestCalls(ctx, 5, stopped).catch((err: unknown) =>
        logBackgroundFailure(
          ctx.log,
          { component: "simulator" },
          "looking for interrupted test calls failed",
          err,
        ),
      ),
    () => POLL_MS,
  );
}
