/**
 * `npm run bench [-- --quick] [--json FILE] [--workers N] [--only a,b]`: measures the product the
 * way its users load it and prints each figure next to the raw HTTP limit measured in the same
 * run, so the ratios hold on any machine. See docs/performance.md.
 */
import { writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { parseArgs } from "node:util";
import { loadConfig } from "../src/config.js";
import { VERSION } from "../src/version.js";
import { ReceiverProcess } from "./receiver-client.js";
import {
  type BenchConfig,
  scenarioDrain,
  scenarioE2E,
  scenarioFanout,
  scenarioIsolation,
  scenarioLatency,
  scenarioMemory,
  scenarioRaw,
  scenarioRawAgain,
} from "./scenarios.js";

const ALL = ["raw", "drain", "e2e", "latency", "fanout", "isolation", "memory"] as const;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: "boolean", default: false },
      json: { type: "string" },
      workers: { type: "string" },
      only: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(
      "usage: npm run bench -- [--quick] [--json FILE] [--workers N] [--only raw,drain,e2e,latency,fanout,isolation,memory]\n",
    );
    return;
  }
  const workers = values.workers === undefined ? undefined : Number(values.workers);
  if (workers !== undefined && !(Number.isInteger(workers) && workers > 0)) {
    throw new Error(`--workers: expected a positive integer, got "${values.workers}"`);
  }
  const only = new Set(values.only ? values.only.split(",") : ALL);
  for (const o of only)
    if (!(ALL as readonly string[]).includes(o)) throw new Error(`--only: unknown scenario "${o}"`);
  // The raw limit is every ratio's denominator, so it always runs.
  only.add("raw");
  const quick = values.quick ?? false;
  const started = Date.now();
  const say = (line: string) => process.stdout.write(`${line}\n`);

  const cpu = cpus()[0]?.model.trim() ?? "unknown";
  const machine = {
    cpu,
    cores: cpus().length,
    node: process.version,
    total_memory_mb: Math.round(totalmem() / 2 ** 20),
    platform: `${process.platform} ${process.arch}`,
  };
  say(`Klen call webhooks ${VERSION} benchmark${quick ? " (--quick)" : ""}`);
  say(
    `machine: ${machine.cpu}, ${machine.cores} cores, ${machine.total_memory_mb} MB, Node ${machine.node}, ${machine.platform}`,
  );
  // The server processes inherit this environment: their setting is the one worked out here.
  const senderThread = loadConfig(process.env).senderThread;
  say(
    `config: receiver = 1 forked process (${4} ports + 1 dead port, HMAC-verifies every request); server = the real CLI (\`serve\`, KLEN_DEV=1, LOG_LEVEL=error) as its own process, sender thread ${senderThread ? "on" : "off"} (KLEN_SENDER_THREAD); load generator = this process (undici keep-alive).`,
  );
  say(
    `        Backlogs are queued in this process through the server's own emitEvent with no dispatcher running, then a server process drains them.`,
  );
  // Other work on the machine skews every wall-clock figure; the CPU-per-delivery figures less so.
  say(
    `load average at start: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  if (machine.cores <= 2)
    say(
      `        Note: on ${machine.cores} cores the receiver, the server and the load generator share the CPU.`,
    );

  const receiver = await ReceiverProcess.start(4);
  const cfg: BenchConfig = { quick, workers, say, receiver, ledgers: [] };
  const result: Record<string, unknown> = {
    version: VERSION,
    quick,
    machine,
    config: {
      receiver_ports: 4,
      workers: workers ?? null,
      sender_thread: senderThread,
      started_at: new Date(started).toISOString(),
    },
    load_average_start: loadavg(),
  };
  try {
    say("\n1. Raw limit: signed ~1 KB POSTs, one Node process → loopback receiver (undici, keep-alive)");
    const first = await scenarioRaw(cfg);
    const raw = first.rps;
    say(`    raw limit = ${Math.round(raw).toLocaleString("en-US")} requests/s`);
    result.raw_rps = raw;
    cfg.rawNow = (label) => scenarioRawAgain(cfg, first, label);
    const ratio = (x: number, to = raw) => (to > 0 ? x / to : 0);
    const ratios: Record<string, number> = {};

    if (only.has("drain")) {
      say("\n2. Backlog drain: queued deliveries → loopback receiver");
      const d = await scenarioDrain(cfg, raw);
      result.drain = d;
      ratios.drain_sqlite = ratio(d.sqlite_rps);
      ratios.drain_postgres = ratio(d.postgres_rps);
      ratios.drain_sqlite_to_raw_before = ratio(d.sqlite_rps, d.sqlite_raw_before_rps);
      ratios.drain_postgres_to_raw_before = ratio(d.postgres_rps, d.postgres_raw_before_rps);
    }
    if (only.has("e2e")) {
      say("\n3. End to end: call transitions through the API → received (SQLite, one `serve` process)");
      const e = await scenarioE2E(cfg, raw);
      result.e2e_rps = e.rps;
      result.e2e = e;
      ratios.e2e = ratio(e.rps);
      ratios.e2e_to_raw_before = ratio(e.rps, e.raw_before_rps);
    }
    if (only.has("latency")) {
      say("\n4. Latency at a fixed offered load: API 2xx → arrival at the receiver (SQLite)");
      result.latency = await scenarioLatency(cfg);
    }
    if (only.has("fanout")) {
      say("\n5. Fan-out: every event to 100 endpoints (SQLite)");
      result.fanout = await scenarioFanout(cfg);
    }
    if (only.has("isolation")) {
      say(
        "\n6. Isolation: 4 healthy endpoints, alone and beside one that never answers (timeout 1 s, fast retries; SQLite)",
      );
      result.isolation = await scenarioIsolation(cfg);
    }
    if (only.has("memory")) {
      say(`\n7. Memory: draining a ${quick ? "50,000" : "1,000,000"}-delivery SQLite backlog`);
      result.memory = await scenarioMemory(cfg);
    }
    result.ratios = ratios;
    if (only.size > 1) {
      say("\n8. Raw limit again, at the best concurrency: how far the machine drifted during the run");
      const again = await scenarioRawAgain(cfg, first);
      result.raw_rps_end = again;
      say(
        `    raw limit now ${Math.round(again).toLocaleString("en-US")} requests/s = ${raw > 0 ? ((again / raw) * 100).toFixed(1) : "–"} % of the first measurement (every ratio above is to the first)`,
      );
    }
  } finally {
    await receiver.stop();
  }
  const ledgerOk = cfg.ledgers.every((l) => l.ok);
  result.ledger_ok = ledgerOk;
  result.ledgers = cfg.ledgers;
  result.duration_s = (Date.now() - started) / 1000;
  result.load_average_end = loadavg();
  say(
    `load average at end: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(" ")}`,
  );
  say(
    `\nledger: ${
      ledgerOk
        ? "every scenario balanced"
        : `VOID runs: ${cfg.ledgers
            .filter((l) => !l.ok)
            .map((l) => l.scenario)
            .join(", ")}`
    } · total ${Math.round((Date.now() - started) / 1000)} s`,
  );
  if (values.json) {
    writeFileSync(values.json, `${JSON.stringify(result, null, 2)}\n`);
    say(`wrote ${values.json}`);
  }
  if (!ledgerOk) process.exitCode = 1;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
