import { EventEmitter } from "node:events";
import type { Config } from "../config.js";
import type { Health } from "../health.js";
import type { Logger } from "../log.js";
import type { Store } from "../storage/store.js";
import type { Clock } from "../util/time.js";

/**
 * In-process wake-up: the API pokes it after committing an event so that a dispatcher in the same
 * process claims the new deliveries at once instead of at its next poll. Other processes hear
 * about work through `store.notifyWork()` (LISTEN/NOTIFY on PostgreSQL).
 */
export class WorkSignal extends EventEmitter {
  wake(): void {
    this.emit("work");
  }
}

/** What every route and worker needs, passed in rather than imported, so tests can build their own. */
export interface AppContext {
  store: Store;
  config: Config;
  log: Logger;
  clock: Clock;
  work: WorkSignal;
  version: string;
  /** Background loops' failures, for /healthz (absent where no loop runs, as in unit tests). */
  health?: Health;
}

/**
 * Called after a transaction that changed an endpoint (its URL, secret, headers, disabled, deleted)
 * has committed: dispatchers, here and in other processes, read it again before an attempt they
 * claimed before the change, instead of sending with what they read then.
 */
export async function announceEndpointChange(ctx: AppContext, endpointId: string): Promise<void> {
  ctx.work.emit("endpoint", endpointId);
  if (ctx.store.caps.crossProcessNotify) await ctx.store.notifyWork(`endpoint:${endpointId}`);
}

/** Called after a transaction that created deliveries has committed. */
export async function announceWork(ctx: AppContext): Promise<void> {
  ctx.work.wake();
  if (ctx.store.caps.crossProcessNotify) await ctx.store.notifyWork();
}
