import { randomBytes } from "node:crypto";
import { tempDir } from "../test/helpers/server.js";
import { checkLedger, type LedgerCheck, ledgerLine } from "./ledger.js";
import { Api, closedLoop, createCalls, latencies, now, openLoop, percentile, rawLimit } from "./load.js";
import { benchPostgres } from "./postgres.js";
import { queueBacklog } from "./queue.js";
import type { ReceiverProcess } from "./receiver-client.js";
import {
  BENCH_API_KEY,
  cpuSeconds,
  peakRssMb,
  type ServerProcess,
  startServerProcess,
} from "./server-proc.js";

export interface BenchConfig {
  quick: boolean;
  workers: number | undefined;
  say: (line: string) => void;
  receiver: ReceiverProcess;
  ledgers: Array<{ scenario: string; ok: boolean }>;
  /**
   * The raw limit measured once more, now, at the concurrency that was best (set once scenario 1
   * ran): the ratio'd rows take one just before they start, beside their ratio to the first.
   */
  rawNow?: (label: string) => Promise<number>;
}

/** How long a scenario may see no new arrival before its run is declared void. */
const STALL_MS = 30_000;

function fmt(n: number, digits = 0): string {
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function record(cfg: BenchConfig, scenario: string, l: LedgerCheck): void {
  cfg.ledgers.push({ scenario, ok: l.ok });
  cfg.say(`    ${ledgerLine(l)}`);
}

/** One raw-limit measurement at `lanes` concurrent requests, with its ledger and CPU per request. */
async function rawRun(
  cfg: BenchConfig,
  secret: string,
  lanes: number,
  ms: number,
  scenario: string,
  label = "",
) {
  await cfg.receiver.reset({ "/raw": secret });
  const cpu0 = process.cpuUsage();
  const rcpu0 = cpuSeconds(cfg.receiver.pid);
  const r = await rawLimit(cfg.receiver, secret, lanes, ms);
  const cpu = process.cpuUsage(cpu0);
  const clientUs = (cpu.user + cpu.system) / Math.max(1, r.sent);
  const receiverUs = ((cpuSeconds(cfg.receiver.pid) - rcpu0) / Math.max(1, r.sent)) * 1e6;
  const got = await cfg.receiver.digest();
  const at = got.paths["/raw"];
  const ok = r.failed === 0 && at !== undefined && at.distinct === r.sent && got.badSignatures === 0;
  cfg.ledgers.push({ scenario, ok });
  cfg.say(
    `    ${label}concurrency ${String(lanes).padStart(3)}: ${fmt(r.rps)} req/s  (ledger ${ok ? "OK" : "FAILED"}: ${at?.distinct ?? 0}/${r.sent} ids received, ${got.badSignatures} bad signatures; CPU per request: sender ${fmt(clientUs)} µs, receiver ${fmt(receiverUs)} µs)`,
  );
  return { rps: ok ? r.rps : 0 };
}

/** 1. The raw limit: the best of a few concurrencies. */
export async function scenarioRaw(cfg: BenchConfig): Promise<{ rps: number; lanes: number; secret: string }> {
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  const ms = cfg.quick ? 1_500 : 5_000;
  const best = { rps: 0, lanes: 64, secret };
  // Warm-up (JIT, connections), not counted.
  await cfg.receiver.reset({ "/raw": secret });
  await rawLimit(cfg.receiver, secret, 64, 1_000);
  for (const lanes of [16, 32, 64, 128]) {
    const r = await rawRun(cfg, secret, lanes, ms, `raw@${lanes}`);
    if (r.rps > best.rps) Object.assign(best, { rps: r.rps, lanes });
  }
  return best;
}

/**
 * The raw limit measured again after the other scenarios, at the concurrency that was best: how
 * far the machine itself drifted during the run, which every ratio above is subject to.
 */
export async function scenarioRawAgain(
  cfg: BenchConfig,
  first: { lanes: number; secret: string },
  /** When, e.g. "before the SQLite drain" (`BenchConfig.rawNow`); none: at the end of the run. */
  when?: string,
) {
  const ms = cfg.quick ? 1_500 : 5_000;
  const r = await rawRun(
    cfg,
    first.secret,
    first.lanes,
    ms,
    when ? `raw ${when}` : "raw again",
    when ? `raw limit just ${when}, ` : "",
  );
  return r.rps;
}

/** `x` as a share of the run's raw limit and, when measured, of the one taken just before it. */
function ofRaw(x: number, raw: number, before: number | undefined): string {
  const first = `${fmt((x / raw) * 100, 1)} % of raw`;
  return before
    ? `${first} (${fmt((x / before) * 100, 1)} % of the ${fmt(before)} req/s measured just before)`
    : first;
}

interface Drained {
  rps: number;
  drainS: number;
  /** From spawning the server process(es) to the last arrival (includes start-up and migration check). */
  sinceSpawnS: number;
  /** Server CPU time (all its processes, start-up included) per delivery, in µs: robust to a busy machine. */
  serverCpuUs: number;
  deliveries: number;
  peakRssMb: number | undefined;
  ledger: LedgerCheck;
  /** The raw limit measured after queueing, just before the server started (`rawBefore`). */
  rawBefore: number | undefined;
  /** Requests the dead endpoint (`dead`) read until the last healthy delivery arrived. */
  deadAttempts: number;
}

/**
 * Queues a backlog with no dispatcher running (in this process, through the server's own
 * emitEvent), starts the real server process(es) on it and times until the ledger balances.
 */
async function drain(
  cfg: BenchConfig,
  opts: {
    databaseUrl: string;
    dataDir: string;
    deliveries: number;
    endpoints: number;
    workers?: number;
    /** Also subscribe an endpoint that never answers (isolation); its deliveries are not expected. */
    dead?: boolean;
    env?: Record<string, string>;
    /** Measure the raw limit after queueing, before the server starts (`BenchConfig.rawNow`), under this label. */
    rawBefore?: string;
  },
): Promise<Drained> {
  const paths = Array.from({ length: opts.endpoints }, (_, i) => `/d/${i}`);
  const urls = paths.map((p, i) => cfg.receiver.url(i, p));
  if (opts.dead) urls.push(cfg.receiver.deadUrl("/dead"));
  const events = Math.ceil(opts.deliveries / opts.endpoints);
  let lastShown = 0;
  const backlog = await queueBacklog({
    databaseUrl: opts.databaseUrl,
    events,
    endpointUrls: urls,
    onProgress: (done) => {
      if (done - lastShown >= 100_000) {
        lastShown = done;
        cfg.say(`      queued ${fmt(done * opts.endpoints)} deliveries…`);
      }
    },
  });
  const expected = events * opts.endpoints;
  cfg.say(
    `    queued ${fmt(backlog.deliveries)} deliveries (${fmt(events)} events × ${urls.length} endpoint${urls.length === 1 ? "" : "s"}${opts.dead ? ", one of them dead" : ""}) in ${fmt(backlog.queueSeconds, 1)} s; dispatcher stopped`,
  );
  const rawBefore = opts.rawBefore && cfg.rawNow ? await cfg.rawNow(opts.rawBefore) : undefined;
  await cfg.receiver.reset(backlog.secrets);
  const procs: ServerProcess[] = [];
  const spawnedAt = now();
  let peak: number | undefined;
  let cpu = 0;
  let deadAttempts = 0;
  try {
    const env = opts.env ?? {};
    if (opts.workers === undefined) {
      procs.push(await startServerProcess({ dataDir: opts.dataDir, databaseUrl: opts.databaseUrl, env }));
    } else {
      procs.push(
        await startServerProcess({ dataDir: opts.dataDir, databaseUrl: opts.databaseUrl, role: "api", env }),
      );
      const workers = await Promise.all(
        Array.from({ length: opts.workers }, () =>
          startServerProcess({ dataDir: opts.dataDir, databaseUrl: opts.databaseUrl, role: "worker", env }),
        ),
      );
      procs.push(...workers);
    }
    await cfg.receiver.waitForDistinct(expected, STALL_MS);
    deadAttempts = (await cfg.receiver.count()).dead;
    peak = Math.max(...procs.map((p) => peakRssMb(p.proc.pid) ?? 0));
    cpu = procs.reduce((a, p) => a + cpuSeconds(p.proc.pid), 0);
  } finally {
    await Promise.all(procs.map((p) => p.kill()));
  }
  const got = await cfg.receiver.digest();
  const ledger = await checkLedger({
    databaseUrl: opts.databaseUrl,
    paths,
    received: got,
    expectCount: expected,
  });
  const drainS = (got.lastAt - got.firstAt) / 1000;
  return {
    rps: ledger.received / drainS,
    drainS,
    deliveries: expected,
    sinceSpawnS: (got.lastAt - spawnedAt) / 1000,
    serverCpuUs: (cpu / expected) * 1e6,
    peakRssMb: peak,
    ledger,
    rawBefore,
    deadAttempts,
  };
}

/** 2. Backlog drain on SQLite and PostgreSQL. */
export async function scenarioDrain(cfg: BenchConfig, raw: number) {
  const n = cfg.quick ? 10_000 : 100_000;
  const out = {
    sqlite_rps: 0,
    postgres_rps: 0,
    sqlite_cpu_us_per_delivery: 0,
    postgres_cpu_us_per_delivery: 0,
    deliveries: n,
    postgres_workers: "",
    /** The raw limit measured just before each drain (0: not measured). */
    sqlite_raw_before_rps: 0,
    postgres_raw_before_rps: 0,
    /** SQLite, every delivery to one endpoint (its 64 slots are the only ones in use): no target. */
    sqlite_one_endpoint_rps: 0,
    sqlite_one_endpoint_cpu_us_per_delivery: 0,
    one_endpoint_deliveries: cfg.quick ? 5_000 : 30_000,
  };
  /** One SQLite drain in a fresh folder, printed; its figures, or 0 where its ledger failed. */
  const sqliteDrain = async (
    label: string,
    scenario: string,
    deliveries: number,
    endpoints: number,
    rawBefore?: string,
  ) => {
    const dir = tempDir("klen-bench-");
    try {
      cfg.say(`  ${label}:`);
      const d = await drain(cfg, {
        databaseUrl: `sqlite:${dir.path}/klen.db`,
        dataDir: dir.path,
        deliveries,
        endpoints,
        ...(rawBefore ? { rawBefore } : {}),
      });
      record(cfg, scenario, d.ledger);
      cfg.say(
        `    ${fmt(d.rps)} deliveries/s (${fmt(d.drainS, 2)} s, first to last arrival) = ${ofRaw(d.rps, raw, d.rawBefore)}; server CPU ${fmt(d.serverCpuUs)} µs per delivery`,
      );
      return { rps: d.ledger.ok ? d.rps : 0, cpuUs: d.serverCpuUs, rawBefore: d.rawBefore ?? 0 };
    } finally {
      dir.remove();
    }
  };
  const all = await sqliteDrain(
    "SQLite (server: one `serve` process, role all)",
    "drain sqlite",
    n,
    10,
    "before the SQLite drain",
  );
  out.sqlite_rps = all.rps;
  out.sqlite_cpu_us_per_delivery = all.cpuUs;
  out.sqlite_raw_before_rps = all.rawBefore;
  const one = await sqliteDrain(
    "SQLite, one endpoint (a customer's backlog after an outage; no target)",
    "drain sqlite, one endpoint",
    out.one_endpoint_deliveries,
    1,
  );
  out.sqlite_one_endpoint_rps = one.rps;
  out.sqlite_one_endpoint_cpu_us_per_delivery = one.cpuUs;
  let pgs: Awaited<ReturnType<typeof benchPostgres>> | undefined;
  try {
    pgs = await benchPostgres();
    const db = await pgs.fresh();
    const dir = tempDir("klen-bench-");
    try {
      const who =
        cfg.workers === undefined
          ? "one `serve` process, role all"
          : `${cfg.workers} \`serve --role worker\` processes + one \`--role api\``;
      out.postgres_workers = cfg.workers === undefined ? "all-in-one" : String(cfg.workers);
      cfg.say(`  PostgreSQL (${pgs.describe}; server: ${who}):`);
      const d = await drain(cfg, {
        databaseUrl: db.url,
        dataDir: dir.path,
        deliveries: n,
        endpoints: 10,
        ...(cfg.workers !== undefined ? { workers: cfg.workers } : {}),
        rawBefore: "before the PostgreSQL drain",
      });
      record(cfg, "drain postgres", d.ledger);
      if (d.ledger.ok) out.postgres_rps = d.rps;
      out.postgres_raw_before_rps = d.rawBefore ?? 0;
      cfg.say(
        `    ${fmt(d.rps)} deliveries/s (${fmt(d.drainS, 2)} s) = ${ofRaw(d.rps, raw, d.rawBefore)}; server CPU ${fmt(d.serverCpuUs)} µs per delivery (all processes)`,
      );
      out.postgres_cpu_us_per_delivery = d.serverCpuUs;
    } finally {
      dir.remove();
      await db.drop().catch(() => {});
    }
  } catch (err) {
    cfg.say(`    PostgreSQL row not run: ${(err as Error).message}`);
    cfg.ledgers.push({ scenario: "drain postgres", ok: false });
  } finally {
    await pgs?.stop();
  }
  return out;
}

interface ApiRig {
  server: ServerProcess;
  api: Api;
  agentId: number;
  databaseUrl: string;
  done(): Promise<void>;
}

/** A fresh server process on a fresh SQLite file, an agent, and endpoints at the given URLs. */
async function apiRig(
  cfg: BenchConfig,
  endpoints: Array<{ url: string; path: string }>,
  opts: { keys?: boolean; env?: Record<string, string>; connections?: number } = {},
): Promise<ApiRig> {
  const dir = tempDir("klen-bench-");
  const databaseUrl = `sqlite:${dir.path}/klen.db`;
  const server = await startServerProcess({ dataDir: dir.path, databaseUrl, env: opts.env ?? {} }).catch(
    (err: unknown) => {
      dir.remove();
      throw err;
    },
  );
  const api = new Api(server.url, BENCH_API_KEY, opts.connections ?? 64);
  const agent = await api.post("/v1/agents", { name: "Customer Support", assistant_id: "assistant_abc123" });
  if (agent.status !== 201) throw new Error(`agent: ${agent.status}`);
  const secrets: Record<string, string> = {};
  for (const e of endpoints) {
    const r = await api.post("/v1/endpoints", { url: e.url });
    if (r.status !== 201) throw new Error(`endpoint: ${r.status} ${JSON.stringify(r.json)}`);
    secrets[e.path] = r.json.secret as string;
  }
  await cfg.receiver.reset(secrets, opts.keys ?? false);
  return {
    server,
    api,
    agentId: agent.json.id as number,
    databaseUrl,
    async done() {
      await api.close();
      await server.kill();
      dir.remove();
    },
  };
}

/**
 * Waits for every expected arrival, stops the server, checks the ledger. `cpuUs` is the server's
 * CPU per expected arrival since `cpuFrom` (its CPU seconds then; default: since it started).
 */
async function settle(
  cfg: BenchConfig,
  rig: ApiRig,
  paths: string[],
  expected: number,
  cpuFrom = 0,
): Promise<{ ledger: LedgerCheck; firstAt: number; lastAt: number; cpuUs: number }> {
  await cfg.receiver.waitForDistinct(expected, STALL_MS);
  const cpu = cpuSeconds(rig.server.proc.pid) - cpuFrom;
  await rig.api.close();
  await rig.server.kill();
  const got = await cfg.receiver.digest();
  const ledger = await checkLedger({
    databaseUrl: rig.databaseUrl,
    paths,
    received: got,
    expectCount: expected,
  });
  return { ledger, firstAt: got.firstAt, lastAt: got.lastAt, cpuUs: (cpu / Math.max(1, expected)) * 1e6 };
}

/** 3. End to end through the API, closed loop at the highest rate it sustains. */
export async function scenarioE2E(cfg: BenchConfig, raw: number) {
  const lanes = 16;
  const ms = cfg.quick ? 5_000 : 15_000;
  const rawBefore = cfg.rawNow ? await cfg.rawNow("before this scenario") : undefined;
  const rig = await apiRig(cfg, [{ url: cfg.receiver.url(0, "/e2e"), path: "/e2e" }]);
  try {
    const calls = await createCalls(rig.api, rig.agentId, cfg.quick ? 2_000 : 10_000);
    const setupCpu = cpuSeconds(rig.server.proc.pid);
    const load = await closedLoop(rig.api, calls, lanes, ms);
    const s = await settle(cfg, rig, ["/e2e"], load.events, setupCpu);
    record(cfg, "e2e", s.ledger);
    const posted = (load.events / (load.lastAckAt - load.firstPostAt)) * 1000;
    const rps = (load.events / (s.lastAt - load.firstPostAt)) * 1000;
    cfg.say(
      `    ${fmt(load.events)} transitions by ${lanes} concurrent clients (${load.errors} errors): API accepted ${fmt(posted)} events/s; first post → last arrival ${fmt(rps)} events/s = ${ofRaw(rps, raw, rawBefore)}; server CPU ${fmt(s.cpuUs)} µs per event (API + delivery, from the first transition)`,
    );
    return {
      rps: s.ledger.ok ? rps : 0,
      api_rps: posted,
      events: load.events,
      server_cpu_us_per_event: s.cpuUs,
      raw_before_rps: rawBefore ?? 0,
    };
  } finally {
    await rig.done();
  }
}

function latencyLine(l: number[]): string {
  return `p50 ${fmt(percentile(l, 50), 1)} ms, p99 ${fmt(percentile(l, 99), 1)} ms, max ${fmt(l[l.length - 1] ?? Number.NaN, 1)} ms`;
}

/**
 * The open loops of the latency measurements first run this long at the same rate, unmeasured: a
 * fresh server process runs its first requests in V8's interpreter and baseline code, and a queue
 * built then takes the first few hundred milliseconds' latencies with it.
 */
const WARMUP_MS = 1_000;

/** What the server's /metrics says about its pauses: event-loop delay and garbage collection. */
interface ServerPauses {
  /** Longest event-loop delay since the previous scrape (prom-client resets it on each scrape). */
  maxLagMs: number;
  /** Since the process started: major collections, time in all collections, collections over 100 ms. */
  majorGcs: number;
  gcSeconds: number;
  gcsOver100ms: number;
}

async function serverPauses(api: Api): Promise<ServerPauses> {
  const text = await api.text("/metrics");
  /** The sum of the GC histogram's lines matching `series` (a pattern: every kind, or one). */
  const total = (series: string) =>
    [...text.matchAll(new RegExp(`^klen_nodejs_gc_duration_seconds_${series} (\\S+)$`, "gm"))].reduce(
      (a, m) => a + Number(m[1]),
      0,
    );
  const lag = /^klen_nodejs_eventloop_lag_max_seconds (\S+)$/m.exec(text);
  return {
    maxLagMs: Number(lag?.[1] ?? Number.NaN) * 1000,
    majorGcs: total('count\\{kind="major"\\}'),
    gcSeconds: total('sum\\{kind="\\w+"\\}'),
    gcsOver100ms: total('count\\{kind="\\w+"\\}') - total('bucket\\{le="0\\.1",kind="\\w+"\\}'),
  };
}

/** Pauses over a window: each process's longest, and the server's collections in it. */
interface WindowPauses {
  generator_ms: number;
  server_ms: number;
  receiver_ms: number;
  server_major_gcs: number;
  server_gc_ms: number;
  server_gcs_over_100ms: number;
}

/**
 * An open loop at `rate` for the warm-up and then `ms`, and the latencies measured after the
 * warm-up, with each process's longest pause over the measured window (the load generator, the
 * server's event loop from its /metrics, the receiver's), to tell whose pause a tail is.
 */
async function measuredOpenLoop(rig: ApiRig, cfg: BenchConfig, rate: number, ms: number, paths: string[]) {
  const calls = await createCalls(rig.api, rig.agentId, Math.ceil((rate * (WARMUP_MS + ms)) / 1000 / 4 + 50));
  let before: Promise<[ServerPauses, number]> | undefined;
  const load = await openLoop(rig.api, calls, rate, WARMUP_MS + ms, {
    atMs: WARMUP_MS,
    fn: () => {
      before = Promise.all([serverPauses(rig.api), cfg.receiver.maxPause()]);
    },
  });
  const arrivals = await arrivalsAfter(cfg, load.events * paths.length);
  const [[s0], s1, receiverMs] = await Promise.all([before!, serverPauses(rig.api), cfg.receiver.maxPause()]);
  const pauses: WindowPauses = {
    generator_ms: load.maxGapMs,
    server_ms: s1.maxLagMs,
    receiver_ms: receiverMs,
    server_major_gcs: s1.majorGcs - s0.majorGcs,
    server_gc_ms: (s1.gcSeconds - s0.gcSeconds) * 1000,
    server_gcs_over_100ms: s1.gcsOver100ms - s0.gcsOver100ms,
  };
  const sent = (load.events / (WARMUP_MS + ms)) * 1000;
  return {
    load,
    arrivals,
    sent,
    pauses,
    latencies: latencies(load.acks, arrivals, paths, load.firstPostAt + WARMUP_MS),
  };
}

function pausesLine(p: WindowPauses): string {
  return `longest pauses: load generator ${fmt(p.generator_ms, 1)} ms, server ${fmt(p.server_ms, 1)} ms, receiver ${fmt(p.receiver_ms, 1)} ms; server GC ${fmt(p.server_gc_ms)} ms (${p.server_major_gcs} major, ${p.server_gcs_over_100ms} over 100 ms)`;
}

/** 4. Latency at fixed offered loads: API 2xx → arrival, after a warm-up at the same rate. */
export async function scenarioLatency(cfg: BenchConfig) {
  const ms = cfg.quick ? 3_000 : 10_000;
  const out: Array<{
    offered_rps: number;
    achieved_rps: number;
    p50_ms: number;
    p99_ms: number;
    max_ms: number;
    samples: number;
    generator_max_pause_ms: number;
    pauses: WindowPauses;
  }> = [];
  for (const rate of [500, 2000]) {
    const rig = await apiRig(cfg, [{ url: cfg.receiver.url(0, "/lat"), path: "/lat" }], { keys: true });
    try {
      const {
        load,
        sent: achieved,
        latencies: l,
        pauses,
      } = await measuredOpenLoop(rig, cfg, rate, ms, ["/lat"]);
      const s = await settle(cfg, rig, ["/lat"], load.events);
      record(cfg, `latency@${rate}`, s.ledger);
      cfg.say(
        `    offered ${rate}/s (sent ${fmt(achieved)}/s${load.behind ? `, ${load.behind} behind schedule` : ""}, ${load.errors} errors): ${latencyLine(l)} over the ${l.length} events after a ${WARMUP_MS / 1000} s warm-up`,
      );
      cfg.say(`      ${pausesLine(pauses)}`);
      out.push({
        offered_rps: rate,
        achieved_rps: achieved,
        p50_ms: percentile(l, 50),
        p99_ms: percentile(l, 99),
        max_ms: l[l.length - 1] ?? Number.NaN,
        samples: l.length,
        generator_max_pause_ms: load.maxGapMs,
        pauses,
      });
    } finally {
      await rig.done();
    }
  }
  return out;
}

async function arrivalsAfter(cfg: BenchConfig, expected: number): Promise<Map<string, number>> {
  await cfg.receiver.waitForDistinct(expected, STALL_MS);
  return cfg.receiver.arrivals();
}

/** 5. Fan-out: each event to 100 endpoints. */
export async function scenarioFanout(cfg: BenchConfig) {
  const endpoints = 100;
  const events = cfg.quick ? 200 : 1_000;
  const eps = Array.from({ length: endpoints }, (_, i) => ({
    path: `/f/${i}`,
    url: cfg.receiver.url(i, `/f/${i}`),
  }));
  const rig = await apiRig(cfg, eps);
  try {
    const calls = await createCalls(rig.api, rig.agentId, Math.ceil(events / 4));
    const load = await closedLoop(rig.api, calls, 4, 600_000);
    const s = await settle(
      cfg,
      rig,
      eps.map((e) => e.path),
      load.events * endpoints,
    );
    record(cfg, "fanout", s.ledger);
    const rps = ((load.events * endpoints) / (s.lastAt - load.firstPostAt)) * 1000;
    cfg.say(
      `    ${fmt(load.events)} events × ${endpoints} endpoints = ${fmt(load.events * endpoints)} deliveries: ${fmt(rps)} deliveries/s (first post → last arrival)`,
    );
    return { endpoints, events: load.events, deliveries_per_s: s.ledger.ok ? rps : 0 };
  } finally {
    await rig.done();
  }
}

/**
 * 6. Isolation: 4 healthy endpoints, alone and beside one that accepts connections and never
 * answers. Throughput: a queued backlog drained (the dispatcher's own rate, not the API's);
 * latency: a fixed offered load through the API. Delivery timeout 1 s and a fast retry schedule,
 * so the dead endpoint keeps taking attempts (and slots) for the whole run.
 */
export async function scenarioIsolation(cfg: BenchConfig) {
  const healthy = Array.from({ length: 4 }, (_, i) => ({
    path: `/h/${i}`,
    url: cfg.receiver.url(i, `/h/${i}`),
  }));
  const dead = { path: "/dead", url: cfg.receiver.deadUrl("/dead") };
  const env = { KLEN_DELIVERY_TIMEOUT: "1s", KLEN_RETRY_SCHEDULE: "100ms,200ms,500ms,1s,1s,1s,1s,1s" };
  const rate = 500;
  const ms = cfg.quick ? 3_000 : 8_000;
  /**
   * One drain: healthy deliveries/s, the server's CPU per healthy delivery (µs), and the attempts
   * the dead endpoint got meanwhile.
   */
  type Drain = { rps: number; cpuUs: number; dead: number };
  const drainRps = async (withDead: boolean, round: number): Promise<Drain> => {
    const dir = tempDir("klen-bench-");
    try {
      const d = await drain(cfg, {
        databaseUrl: `sqlite:${dir.path}/klen.db`,
        dataDir: dir.path,
        deliveries: cfg.quick ? 16_000 : 100_000,
        endpoints: healthy.length,
        dead: withDead,
        env,
      });
      record(cfg, `isolation drain ${withDead ? "beside dead" : "alone"} #${round}`, d.ledger);
      return { rps: d.ledger.ok ? d.rps : 0, cpuUs: d.serverCpuUs, dead: d.deadAttempts };
    } finally {
      dir.remove();
    }
  };
  const latency = async (withDead: boolean) => {
    const rig = await apiRig(cfg, withDead ? [...healthy, dead] : healthy, { keys: true, env });
    try {
      const paths = healthy.map((h) => h.path);
      const { load, sent, latencies: l } = await measuredOpenLoop(rig, cfg, rate, ms, paths);
      const s = await settle(cfg, rig, paths, load.events * healthy.length);
      record(cfg, `isolation latency ${withDead ? "beside dead" : "alone"}`, s.ledger);
      return { sent, p50: percentile(l, 50), p99: percentile(l, 99), line: latencyLine(l) };
    } finally {
      await rig.done();
    }
  };
  // Throughput: each drain twice, in the order alone, beside, beside, alone, so that the VM's
  // speed drifting during the scenario weighs on both sides alike; each side's figure is its mean.
  const drains = { alone: [] as Drain[], beside: [] as Drain[] };
  for (const [i, withDead] of [false, true, true, false].entries()) {
    drains[withDead ? "beside" : "alone"].push(await drainRps(withDead, i < 2 ? 1 : 2));
  }
  const rpsOf = (xs: Drain[]) => xs.map((x) => x.rps);
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const alone = { rps: mean(rpsOf(drains.alone)), ...(await latency(false)) };
  const beside = { rps: mean(rpsOf(drains.beside)), ...(await latency(true)) };
  for (const [label, r, xs] of [
    ["alone                 ", alone, drains.alone],
    ["beside a dead endpoint", beside, drains.beside],
  ] as const) {
    cfg.say(
      `    ${label}: drain ${fmt(r.rps)} healthy deliveries/s (${xs.map((x) => fmt(x.rps)).join(", ")}; server CPU ${xs.map((x) => fmt(x.cpuUs)).join(", ")} µs per healthy delivery); at ${rate} events/s offered (sent ${fmt(r.sent)}/s): ${r.line}`,
    );
  }
  const loss = alone.rps > 0 ? (1 - beside.rps / alone.rps) * 100 : Number.NaN;
  cfg.say(`    healthy drain throughput lost beside the dead endpoint: ${fmt(loss, 1)} %`);
  cfg.say(
    `    the dead endpoint's attempts while the healthy ones drained: ${drains.beside.map((x) => fmt(x.dead)).join(", ")}`,
  );
  return {
    healthy_endpoints: healthy.length,
    healthy_rps_alone: alone.rps,
    healthy_rps_beside_dead: beside.rps,
    healthy_rps_alone_runs: rpsOf(drains.alone),
    healthy_rps_beside_dead_runs: rpsOf(drains.beside),
    server_cpu_us_alone_runs: drains.alone.map((x) => x.cpuUs),
    server_cpu_us_beside_dead_runs: drains.beside.map((x) => x.cpuUs),
    dead_attempts_during_drain_runs: drains.beside.map((x) => x.dead),
    p50_ms_alone: alone.p50,
    p99_ms_alone: alone.p99,
    p50_ms_beside_dead: beside.p50,
    p99_ms_beside_dead: beside.p99,
    offered_rps_for_latency: rate,
    loss_pct: loss,
  };
}

/** 7. Memory: peak RSS of the server process while it drains a large SQLite backlog. */
export async function scenarioMemory(cfg: BenchConfig) {
  const backlog = cfg.quick ? 50_000 : 1_000_000;
  const dir = tempDir("klen-bench-");
  try {
    const d = await drain(cfg, {
      databaseUrl: `sqlite:${dir.path}/klen.db`,
      dataDir: dir.path,
      deliveries: backlog,
      endpoints: 10,
    });
    record(cfg, "memory", d.ledger);
    cfg.say(
      `    peak RSS of the server process ${fmt(d.peakRssMb ?? Number.NaN, 1)} MB; server CPU ${fmt(d.serverCpuUs)} µs per delivery; drained ${fmt(d.deliveries)} in ${fmt(d.drainS, 1)} s first to last arrival (${fmt(d.sinceSpawnS, 1)} s from process spawn; ${fmt(d.rps)} deliveries/s)`,
    );
    return {
      backlog: d.deliveries,
      peak_rss_mb: d.peakRssMb ?? 0,
      drain_s: d.ledger.ok ? d.drainS : 0,
      drain_s_from_spawn: d.sinceSpawnS,
      deliveries_per_s: d.rps,
    };
  } finally {
    dir.remove();
  }
}
