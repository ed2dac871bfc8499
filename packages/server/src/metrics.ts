import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { FAIL_REASONS } from "./delivery/complete.js";

/** Prometheus metrics of one process, served at /metrics. */
export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: "klen_" });

export const attemptsTotal = new Counter({
  name: "klen_delivery_attempts_total",
  help: "Delivery attempts made, by outcome (success or error class) and the answer's status class (2xx…5xx, none)",
  labelNames: ["outcome", "status_class"] as const,
  registers: [registry],
});

/** `2xx`…`5xx` for an answer's status, `none` when no answer came. */
export const statusClass = (status: number | null): string =>
  status === null ? "none" : `${Math.floor(status / 100)}xx`;

export const deliveriesFinished = new Counter({
  name: "klen_deliveries_finished_total",
  help: `Deliveries this process finished: succeeded, or failed with the reason it was given up (${FAIL_REASONS.join(", ")})`,
  labelNames: ["status", "reason"] as const,
  registers: [registry],
});

export const endpointsDisabled = new Counter({
  name: "klen_endpoints_disabled_total",
  help: "Endpoints this process disabled automatically: gone (answered 410) or failing (every attempt failed for KLEN_DISABLE_AFTER)",
  labelNames: ["reason"] as const,
  registers: [registry],
});

export const attemptSeconds = new Histogram({
  name: "klen_delivery_attempt_duration_seconds",
  help: "Duration of delivery attempts",
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15],
  registers: [registry],
});

export const inflightGauge = new Gauge({
  name: "klen_deliveries_in_flight",
  help: "Delivery attempts in flight in this process",
  registers: [registry],
});

// Every series an alert reads starts at 0, so `increase()` sees the first failure after a start:
// a series that appears only with its first increment has no earlier sample to compare with.
deliveriesFinished.inc({ status: "succeeded", reason: "" }, 0);
for (const reason of FAIL_REASONS) deliveriesFinished.inc({ status: "failed", reason }, 0);
for (const reason of ["gone", "failing"]) endpointsDisabled.inc({ reason }, 0);

export const httpRequests = new Counter({
  name: "klen_http_requests_total",
  help: "HTTP requests answered, by method and status class",
  labelNames: ["method", "status"] as const,
  registers: [registry],
});

export const streamsOpen = new Gauge({
  name: "klen_event_streams_open",
  help: "Event streams (GET /v1/events/stream) open in this process",
  registers: [registry],
});

export const claimErrors = new Counter({
  name: "klen_dispatcher_claim_errors_total",
  help: "Claims of due deliveries that failed (the database was unavailable or refused); the dispatcher retries",
  registers: [registry],
});

/** The due backlog, counted up to this many deliveries so that a scrape stays cheap. */
export const BACKLOG_COUNT_CAP = 100_000;

export interface Backlog {
  /** Pending deliveries due now (capped at BACKLOG_COUNT_CAP). */
  due: number;
  /** How long the longest-waiting due delivery has been due, in ms; 0 when none is. */
  oldestDueMs: number;
}

/**
 * How long a scrape waits for the backlog's read: a database that stalls (a lock held, a network
 * cut) held /metrics for KLEN_DATABASE_TIMEOUT, 20 s, longer than Prometheus waits for a scrape,
 * and every metric was lost just when it was wanted.
 */
export const BACKLOG_READ_TIMEOUT_MS = 2_000;

// The database is read once per scrape for the three gauges (each gauge collects on its own).
let backlogSource: (() => Promise<Backlog>) | undefined;
let lastRead: { at: number; value: Promise<Backlog | undefined> } | undefined;
function backlog(): Promise<Backlog | undefined> {
  const now = Date.now();
  if (!backlogSource) return Promise.resolve(undefined);
  if (!lastRead || now - lastRead.at > 1000) {
    // A database that cannot answer in time leaves the backlog gauges as they were and sets
    // klen_database_up to 0; /metrics still answers.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<undefined>((resolve) => {
      timer = setTimeout(() => resolve(undefined), BACKLOG_READ_TIMEOUT_MS);
    });
    lastRead = {
      at: now,
      value: Promise.race([backlogSource().catch(() => undefined), late]).finally(() => clearTimeout(timer)),
    };
  }
  return lastRead.value;
}

/** Where /metrics reads the backlog from: the process's store (app.ts). */
export function measureBacklogWith(source: () => Promise<Backlog>): void {
  backlogSource = source;
  lastRead = undefined;
}

new Gauge({
  name: "klen_database_up",
  help: `1 when this process read the backlog from the database within ${BACKLOG_READ_TIMEOUT_MS / 1000} s at this scrape, 0 when the database failed or was slower: klen_deliveries_due and klen_delivery_oldest_due_seconds then keep their last values`,
  registers: [registry],
  async collect() {
    this.set((await backlog()) ? 1 : 0);
  },
});

new Gauge({
  name: "klen_deliveries_due",
  help: `Pending deliveries due now, in the whole database (counted up to ${BACKLOG_COUNT_CAP}): the backlog workers have yet to claim`,
  registers: [registry],
  async collect() {
    const b = await backlog();
    if (b) this.set(b.due);
  },
});

new Gauge({
  name: "klen_delivery_oldest_due_seconds",
  help: "How long the longest-waiting due delivery has been due, in the whole database; 0 when none is",
  registers: [registry],
  async collect() {
    const b = await backlog();
    if (b) this.set(b.oldestDueMs / 1000);
  },
});
