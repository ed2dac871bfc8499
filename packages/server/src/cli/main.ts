#!/usr/bin/env node
import { statSync } from "node:fs";
import { Command, Option } from "commander";
import { ConfigError, cannotOpenDatabase, loadConfig } from "../config.js";
import type { Role } from "../server.js";
import { formatDuration } from "../util/units.js";
import { VERSION } from "../version.js";
import { registerClientCommands } from "./client-commands.js";
import { printable } from "./output.js";

// The server's modules (Fastify, Kysely, the database drivers, pino) are loaded by the commands
// that use them, not at start: `--help` and the client commands start in a fraction of the time.
const storage = async () => {
  const [{ openStore }, { migrate }] = await Promise.all([
    import("../storage/store.js"),
    import("../storage/migrate.js"),
  ]);
  return { openStore, migrate };
};

/**
 * Opens the configured database and migrates it (`migrate`, `accounts create`); a failure says
 * which database it was (without its password) before the driver's words.
 */
async function openMigrated(cfg: ReturnType<typeof loadConfig>) {
  const { openStore, migrate } = await storage();
  try {
    const store = await openStore(cfg.databaseUrl, { encryptionKey: cfg.encryptionKey });
    try {
      return { store, applied: await migrate(store) };
    } catch (err) {
      await store.close().catch(() => {});
      throw err;
    }
  } catch (err) {
    // It opened: the schema is what is wrong, and the message says so.
    if ((err as Error).name === "SchemaTooNewError") throw err;
    throw cannotOpenDatabase(cfg.databaseUrl, err);
  }
}

function config() {
  try {
    return loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`klen-webhooks: invalid configuration: ${err.message}\n`);
      // With --json every failure is also a document on stdout (cli.md), this one too.
      if (process.argv.includes("--json")) {
        const error = { code: "invalid_configuration", message: err.message, status: 0, field: err.variable };
        process.stdout.write(`${JSON.stringify({ error })}\n`);
      }
      process.exit(2);
    }
    throw err;
  }
}

/**
 * Files and folders a command that stores data makes are its user's alone (umask 077): the
 * database holds endpoint secrets and the key that signs recording URLs, the blobs are calls'
 * recordings and transcripts. Made under the usual 022 they were readable by every local user.
 * Returns what is already there and open to others (an older version made it so), to be warned of.
 */
function ownFiles(cfg: { dataDir: string; databaseUrl: string }): string[] {
  process.umask(0o077);
  const paths = [cfg.dataDir];
  if (cfg.databaseUrl.startsWith("sqlite:")) paths.push(cfg.databaseUrl.slice("sqlite:".length));
  return paths.filter((p) => {
    try {
      return (statSync(p).mode & 0o077) !== 0;
    } catch {
      return false;
    }
  });
}
const OPEN_FILES =
  "readable by other users of this machine (it holds endpoint secrets): chmod 700 the data folder and 600 the database file";

/** `ownFiles` for a one-shot command: what is open to others is said on stderr. */
function ownFilesWarned(cfg: { dataDir: string; databaseUrl: string }): void {
  const open = ownFiles(cfg);
  if (open.length > 0) process.stderr.write(`klen-webhooks: warning: ${open.join(", ")} ${OPEN_FILES}\n`);
}

const program = new Command()
  .name("klen-webhooks")
  .description("Klen call webhooks: signed, ordered, retried call.* events for AI voice agents")
  .version(VERSION)
  // A usage error (an unknown option, a bad argument) found while parsing, before any command
  // runs: with --json it is also a JSON document on stdout, as every other failure is (cli.md).
  // Inherited by the commands added below.
  .configureOutput({
    outputError: (text, write) => {
      write(text);
      if (process.argv.includes("--json")) {
        const message = text.trim().replace(/^error: /, "");
        process.stdout.write(`${JSON.stringify({ error: { code: "usage", message, status: 0 } })}\n`);
      }
    },
  });

program
  .command("serve")
  .description("run the API, dashboard and dispatcher (configured by KLEN_* environment variables)")
  .option("--dev", "development mode: allow http:// and loopback/private endpoint URLs (same as KLEN_DEV=1)")
  .addOption(
    new Option("--role <role>", "which part to run").choices(["all", "api", "worker"]).default("all"),
  )
  .action(async (opts: { dev?: boolean; role: Role }) => {
    if (opts.dev) process.env.KLEN_DEV = "1";
    const cfg = config();
    const open = ownFiles(cfg);
    const [{ createLogger }, { startServer }] = await Promise.all([
      import("../log.js"),
      import("../server.js"),
    ]);
    // Every line says which process of a deployment wrote it (api and workers log alike).
    const log = createLogger().child({ role: opts.role });
    if (open.length > 0) log.warn({ paths: open }, OPEN_FILES);
    let fatal: ((err: Error) => void) | undefined;
    // The default account's key is shown once; a start killed by a signal between making the
    // account and listening (Ctrl-C during a slow start: no listener yet, so the signal killed the
    // process outright) showed it never, and the next start made none.
    let madeKey: string | undefined;
    let keyShown = false;
    const showKey = (key: string) => {
      if (keyShown) return;
      keyShown = true;
      process.stderr.write(
        `\nCreated the default account. Its API key (shown once, store it now):\n\n  ${key}\n\n`,
      );
    };
    // Listened for from the start: until started, a signal stops the process at once, showing
    // the key first if one was made; then it stops gracefully (below). One listener throughout: a
    // signal that came while the start's last synchronous work ran is handed to the listener that
    // was registered when it came, and a listener swapped meanwhile lost it (the process ran on).
    let onSignal: (signal: NodeJS.Signals) => void = (signal) => {
      if (madeKey) showKey(madeKey);
      // Nothing in flight yet; said so a supervisor's log shows why the process ended.
      log.warn({ signal }, "stopped by a signal while starting");
      process.exit(signal === "SIGINT" ? 130 : 143);
    };
    process.on("SIGINT", (signal) => onSignal(signal));
    process.on("SIGTERM", (signal) => onSignal(signal));
    const running = await startServer(cfg, log, {
      role: opts.role,
      onFatal: (err) => fatal?.(err),
      onGeneratedKey: (key) => {
        madeKey = key;
      },
    });
    const where = running.address ?? "(no port: set KLEN_WORKER_PORT for /healthz and /metrics)";
    log.info(
      {
        address: running.address,
        database: cfg.databaseUrl.startsWith("sqlite:") ? cfg.databaseUrl : "postgres",
        retry_schedule: cfg.retrySchedule.map(formatDuration).join(","),
      },
      "klen-webhooks started",
    );
    // The banner is left out of CI logs (CI=true, stderr not a terminal); the dev-mode warning and
    // a generated key never are: the key is shown this once, and nothing else can show it again.
    if (process.stderr.isTTY || process.env.CI !== "true")
      process.stderr.write(`\nKlen call webhooks ${VERSION} — ${opts.role} on ${where}\n`);
    if (cfg.dev) process.stderr.write("DEV MODE: http:// and loopback/private endpoint URLs are allowed.\n");
    if (running.generatedKey) showKey(running.generatedKey);
    let stopping = false;
    const stop = async (signal: string, code = 0) => {
      if (stopping) {
        // A second Ctrl-C: the operator will not wait. Attempts in flight are sent again after
        // their lease (at-least-once), nothing is lost.
        log.warn({ signal }, "stopping at once: a second signal");
        process.exit(1);
      }
      stopping = true;
      log.info(
        { signal },
        opts.role === "api"
          ? "stopping: finishing requests in progress"
          : "stopping: finishing in-flight attempts",
      );
      // Everything is bounded by the grace period; this only guards against what is not.
      setTimeout(() => {
        log.error(
          { grace_ms: cfg.deliveryTimeoutMs },
          "did not stop within the grace period + 10 s; exiting",
        );
        process.exit(1);
      }, cfg.deliveryTimeoutMs + 10_000).unref();
      await running.stop(cfg.deliveryTimeoutMs);
      // Said before exiting (pino writes stdout synchronously), so a log shows the stop completed.
      log.info({ exit_code: code }, "stopped");
      process.exit(code);
    };
    onSignal = (signal) => void stop(signal);
    // The process can no longer work as configured (another process turned encryption on): it
    // stops as for SIGTERM, finishing what is in flight, and exits 1 for its supervisor to see.
    fatal = (err) => {
      if (!stopping) void stop(err.message, 1);
    };
  });

program
  .command("migrate")
  .description("apply database migrations (serve also applies them at start)")
  .option("--json", 'print JSON: {"applied": [ids of the migrations applied now]}')
  .action(async (opts: { json?: boolean }) => {
    const cfg = config();
    ownFilesWarned(cfg);
    const { store, applied: ran } = await openMigrated(cfg);
    await store.close();
    if (opts.json) process.stdout.write(`${JSON.stringify({ applied: ran })}\n`);
    else
      process.stdout.write(
        ran.length ? `applied migrations ${ran.join(", ")}\n` : "database is up to date\n",
      );
  });

const accounts = program.command("accounts").description("manage accounts");
accounts
  .command("create")
  .description("create an account and print its API key (shown once)")
  .requiredOption("--name <name>", "account name")
  .option("--json", "print JSON")
  .action(async (opts: { name: string; json?: boolean }) => {
    // The API's rule for an account's name (PATCH /v1/account).
    const name = opts.name.trim();
    if (name === "" || name.length > 200)
      program.error("error: --name must be 1 to 200 characters, not blank");
    const cfg = config();
    ownFilesWarned(cfg);
    const { createAccount } = await import("../accounts/accounts.js");
    const { store } = await openMigrated(cfg);
    const { account, apiKey } = await store.db.transaction().execute((trx) => createAccount(trx, name));
    await store.close();
    const where = cfg.databaseUrl.startsWith("sqlite:") ? cfg.databaseUrl : "PostgreSQL (KLEN_DATABASE_URL)";
    if (opts.json) process.stdout.write(`${JSON.stringify({ ...account, api_key: apiKey })}\n`);
    else
      process.stdout.write(
        `account ${account.id} "${printable(account.name, false)}" in ${where}\nAPI key (shown once): ${apiKey}\n`,
      );
  });

registerClientCommands(program);

// Output piped into `head` and the like: the reader left, which is no error of ours.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code === "EPIPE") process.exit(0);
  throw err;
});

program.parseAsync(process.argv).catch((err: unknown) => {
  const message = (err as Error).message;
  // With --json a failure is a JSON document on stdout too, as for every other command (cli.md).
  if (process.argv.includes("--json"))
    process.stdout.write(`${JSON.stringify({ error: { code: "cli_error", message, status: 0 } })}\n`);
  process.stderr.write(`klen-webhooks: ${message}\n`);
  process.exit(1);
});
