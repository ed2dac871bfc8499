import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** Prometheus metrics of one process, served at /metrics. */
export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: "klen_" });

export const attemptsTotal = new Counter({
  name: "klen_delivery_attempts_total",
  help: "Delivery attempts made, by outcome (success or error class)",
  labelNames: ["outcome"] as const,
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

export const httpRequests = new Counter({
  name: "klen_http_requests_total",
  help: "API requests answered, by method and status class",
  labelNames: ["method", "status"] as const,
  registers: [registry],
});
