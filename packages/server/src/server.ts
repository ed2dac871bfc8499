import type { FastifyInstance } from "fastify";
import {
  createFirstAccount,
  ensureAccountForKey,
  RevokedKeyError,
  undoFirstAccount,
} from "./accounts/accounts.js";
import { buildApp } from "./api/app.js";
import { type AppContext, WorkSignal } from "./api/context.js";
import { blobStoreFor } from "./blobs/blobs.js";
import { signingKey, signingKeySealed } from "./blobs/key.js";
import { type Config, ConfigError, cannotOpenDatabase } from "./config.js";
import { Dispatcher, type DispatcherOptions } from "./delivery/dispatcher.js";
import { recoverJobs } from "./delivery/recover.js";
import { checkEndpointUrl } from "./endpoints/url.js";
import { Health } from "./health.js";
import type { Logger } from "./log.js";
import { retentionJob } from "./retention/job.js";
import { apiPublicUrl, checkSharedConfig, recordApiPublicUrl, SHARED_BEAT_MS } from "./shared-config.js";
import { testCallResumer } from "./simulator/resumer.js";
import { handOverTestCalls, stopTestCalls } from "./simulator/run.js";
import { migrate } from "./storage/migrate.js";
import { resealJob } from "./storage/reseal.js";
import { isDatabaseUnavailable, openStore } from "./storage/store.js";
import { SummaryWorker } from "./summaries/worker.js";
import { Periodic } from "./util/periodic.js";
import { systemClock } from "./util/time.js";
import { formatDuration } from "./util/units.js";
import { VERSION } from "./version.js";

/** Below this, a KLEN_API_KEY outside dev mode draws a warning at start (the README's `dev_key` is 7). */
const MIN_OPERATOR_KEY_LENGTH = 16;

export type Role = "all" | "api" | "worker";

export interface Running {
  ctx: AppContext;
  app: FastifyInstance | undefined;
  dispatcher: Dispatcher | undefined;
  /** The API key printed at first start when no KLEN_API_KEY was given. */
  generatedKey: string | undefined;
  address: string | undefined;
  stop(graceMs?: number): Promise<void>;
}

/** Listens, or fails naming the variables to change (a port in use, a host that does not resolve). */
async function listenOn(
  app: FastifyInstance,
  host: string,
  port: number,
  portVariable: string,
): Promise<string> {
  try {
    return await app.listen({ port, host });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === "EADDRINUSE")
      throw new ConfigError(portVariable, `port ${port} is already in use on ${host}`);
    if (e.code === "EACCES") throw new ConfigError(portVariable, `no permission to listen on port ${port}`);
    throw new ConfigError("KLEN_HOST", `cannot listen on "${host}": ${e.message}`);
  }
}

/**
 * Stops listening and waits for the requests in flight, for `graceMs` at most; then cuts every
 * connection still open. A connection that never sent a request would otherwise hold the close for
 * ever: Node stops timing out incomplete requests once its server is closing.
 */
async function closeApp(app: FastifyInstance, graceMs: number): Promise<void> {
  const cut = setTimeout(() => app.server.closeAllConnections(), graceMs);
  try {
    await app.close();
  } finally {
    clearTimeout(cut);
  }
}

/** Runs `step` until the database answers: while it is unavailable, waits 0.5 s, 1 s, … up to 5 s. */
async function untilAvailable<T>(log: Logger, step: () => Promise<T>): Promise<T> {
  for (let wait = 500; ; wait = Math.min(wait * 2, 5_000)) {
    try {
      return await step();
    } catch (err) {
      if (!isDatabaseUnavailable(err)) throw err;
      log.warn(
        { error: (err as Error).message, retry_in_ms: wait },
        "database unavailable at start; waiting for it (KLEN_DATABASE_URL)",
      );
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/**
 * Outside dev mode, says at start how many enabled endpoints have a URL only dev mode allows
 * (`http://`, a loopback or private address: made while KLEN_DEV was on): their every attempt
 * fails with `blocked_address`, retried on the schedule until the endpoint is disabled.
 */
async function warnDevOnlyEndpoints(ctx: AppContext): Promise<void> {
  try {
    const rows = await ctx.store.db
      .selectFrom("endpoints")
      .select(["id", "url"])
      .where("disabled", "=", 0)
      .where("deleted_at", "is", null)
      .execute();
    const devOnly = rows.filter((r) => {
      try {
        checkEndpointUrl(r.url, false);
        // A name that is always loopback (RFC 6761); others are known only when resolved.
        const host = new URL(r.url).hostname.toLowerCase().replace(/\.$/, "");
        return host === "localhost" || host.endsWith(".localhost");
      } catch {
        return true;
      }
    });
    if (devOnly.length > 0)
      ctx.log.warn(
        { endpoints: devOnly.length, examples: devOnly.slice(0, 5).map((r) => r.id) },
        "enabled endpoints have URLs only KLEN_DEV allows (http://, localhost, a loopback or private address): their attempts fail with blocked_address; start with KLEN_DEV=1, or change or disable them",
      );
  } catch (err) {
    ctx.log.debug({ err }, "could not look for endpoints only dev mode allows");
  }
}

/**
 * Says at start when the blobs the database records lately are none of them in this process's
 * KLEN_DATA_DIR: a process on another machine, or with a folder of its own, beside processes that
 * share one database. It would answer 404 for what the others stored, and they for what it stores.
 * Blobs younger than a minute are left out (their files may be being written).
 */
async function warnUnsharedBlobs(ctx: AppContext): Promise<void> {
  try {
    const recent = await ctx.store.db
      .selectFrom("blobs")
      .select(["id", "path", "sealed", "store"])
      .where("created_at", "<", Date.now() - 60_000)
      .orderBy("created_at", "desc")
      .limit(5)
      .execute();
    if (recent.length === 0) return;
    for (const b of recent) {
      const store = blobStoreFor(ctx, b);
      if ((await store.size(b.path)) !== undefined) return;
    }
    ctx.log.warn(
      { data_dir: ctx.config.dataDir, checked: recent.length },
      "none of the latest stored blobs is in this process's KLEN_DATA_DIR: every process sharing the database must share KLEN_DATA_DIR (a shared volume across machines) or keep new blobs in the database (KLEN_BLOB_STORE=database), or each serves only the recordings and texts it stored",
    );
  } catch (err) {
    ctx.log.debug({ err }, "could not look for the latest blobs in KLEN_DATA_DIR");
  }
}

/** How often a process without KLEN_ENCRYPTION_KEY looks whether another process turned it on. */
const KEY_WATCH_MS = 10_000;

/**
 * Watches, in a process without KLEN_ENCRYPTION_KEY, for the stored blob signing key to become
 * sealed, which the first start of a process with the key does: from then on this process reads
 * sealed values it cannot open and writes clear ones beside them (docs/content.md: every process
 * switches at once). Said once, as an error; the process is then unhealthy and told to stop.
 */
function encryptionWatch(ctx: AppContext, onFatal: ((err: Error) => void) | undefined): Periodic {
  let told = false;
  return new Periodic(
    async () => {
      if (told) return;
      try {
        if (!(await signingKeySealed(ctx.store.db))) return;
      } catch {
        return; // an outage: the other checks report it
      }
      told = true;
      const err = new Error(
        "another process sealed the data with KLEN_ENCRYPTION_KEY and this one has no key: it can read neither endpoint secrets nor event bodies; restart every process with the key",
      );
      ctx.log.error({ component: "encryption" }, err.message);
      ctx.health?.failed("encryption check", err);
      onFatal?.(err);
    },
    () => KEY_WATCH_MS,
  );
}

/**
 * Starts a process of the given role: `all` serves the API and dispatches, `api` only serves,
 * `worker` only dispatches (and binds a port for /healthz and /metrics only with KLEN_WORKER_PORT).
 */
export async function startServer(
  config: Config,
  log: Logger,
  opts: {
    role?: Role;
    dispatcher?: Partial<DispatcherOptions>;
    /** Told when the process can no longer work as configured (it should stop; `serve` exits 1). */
    onFatal?: (err: Error) => void;
    /**
     * Told the default account's key as soon as its account is committed, before the process
     * listens: `serve` shows it if a signal stops the start there (it was lost for good).
     */
    onGeneratedKey?: (key: string) => void;
    /** How often the shared-settings record is written again (tests shorten it). */
    sharedBeatMs?: number;
  } = {},
): Promise<Running> {
  const role = opts.role ?? "all";
  const store = await openStore(config.databaseUrl, {
    encryptionKey: config.encryptionKey,
    server: {
      onBackgroundError: (err) => log.warn({ err }, "database background work failed"),
      onFileLost: (err) => log.error({ err }, "database file lost; refusing every request until restarted"),
      onCreated: (file) => log.info({ file }, "no database file there: created a new, empty one"),
    },
    queryTimeoutMs: config.databaseTimeoutMs,
  }).catch((err: unknown) => {
    throw cannotOpenDatabase(config.databaseUrl, err);
  });
  // A process started while PostgreSQL is down or still starting up (a restart, a supervisor
  // bringing everything up at once) waits for it rather than exiting; so does one whose database
  // goes away during these start-up steps, each of which can run again.
  await untilAvailable(log, () => migrate(store)).catch((err: unknown) => {
    // Reached but refused (a wrong password or user, no such database): say which database, as
    // `migrate` does. PostgreSQL opens its connections lazily, so this is the first query.
    const code = (err as { code?: unknown }).code;
    throw typeof code === "string" && (code.startsWith("28") || code === "3D000")
      ? cannotOpenDatabase(config.databaseUrl, err)
      : err;
  });
  // Created (or read) outside any transaction, so every process agrees on it from the start.
  await untilAvailable(log, () => signingKey(store, store.db));
  // A worker without KLEN_PUBLIC_URL follows the URL the API processes serve at: read at start and
  // again with each beat of its shared-settings record, so a worker started before any API process
  // takes it up once one has started. Answers whether an API process has recorded one.
  const followApiUrl =
    role === "worker" && !config.publicUrlGiven
      ? async () => {
          const recorded = await apiPublicUrl(store.db);
          if (!recorded || recorded === config.publicUrl) return recorded !== undefined;
          log.info(
            { public_url: recorded },
            "KLEN_PUBLIC_URL is not set: using the one the API processes serve at, for the URLs this worker makes",
          );
          config.publicUrl = recorded;
          return true;
        }
      : undefined;
  // Not when the API's URL is the worker's own default (both on PORT 8080 on one machine).
  if (followApiUrl && !(await untilAvailable(log, followApiUrl)))
    log.warn(
      { public_url: config.publicUrl },
      "KLEN_PUBLIC_URL is not set and no API process has started on this database yet: the URLs this worker makes use its own default, where nothing serves blobs, until one starts (looked for every 30 s); set KLEN_PUBLIC_URL",
    );
  const sharedRecord = await untilAvailable(log, () => checkSharedConfig(store.db, config, log, { role }));
  // Kept fresh while this process runs: processes that start later compare with it (shared-config.ts).
  const beat = new Periodic(
    async () => {
      try {
        await followApiUrl?.();
        await sharedRecord.beat();
      } catch {
        // The database is away: the next beat writes it; a record unwritten for 90 s is taken for
        // a process that is gone, which only spares later starts a comparison with this one.
      }
    },
    () => opts.sharedBeatMs ?? SHARED_BEAT_MS,
    // Once at once: the record was written before the start's slower steps (the account, listening).
    0,
  );
  if (config.retentionMs < config.urlTtlMs)
    log.warn(
      { retention: formatDuration(config.retentionMs), url_ttl: formatDuration(config.urlTtlMs) },
      "KLEN_RETENTION is shorter than KLEN_URL_TTL: a recording's or a long transcript's URL stops working when retention purges the blob, before the URL's own expiry",
    );
  const ctx: AppContext = {
    store,
    config,
    log,
    clock: systemClock,
    work: new WorkSignal(),
    version: VERSION,
    health: new Health(),
  };

  let generatedKey: string | undefined;
  if (config.apiKey) {
    const key = config.apiKey;
    const a = await untilAvailable(log, () => ensureAccountForKey(store, key)).catch((err: unknown) => {
      // Not a reason to stop serving the account's other keys: said, and the key stays refused.
      if (!(err instanceof RevokedKeyError)) throw err;
      log.error({ revoked_at: new Date(err.revokedAt).toISOString() }, err.message);
      return undefined;
    });
    // Say which: a key of another account (the CLI shares the variable) is used as it is.
    if (a) log.info({ account_id: a.id, account_name: a.name }, "KLEN_API_KEY answers for this account");
    if (a && !config.dev && config.apiKey.length < MIN_OPERATOR_KEY_LENGTH) {
      // Not refused: a short key is fine on a laptop and an operator may have reasons; but a
      // guessable key on a reachable server is an account anyone can use.
      log.warn(
        { length: config.apiKey.length },
        `KLEN_API_KEY is shorter than ${MIN_OPERATOR_KEY_LENGTH} characters: outside dev mode use a long random key (openssl rand -hex 24)`,
      );
    }
  } else if (role !== "worker") {
    generatedKey = await untilAvailable(log, () => createFirstAccount(store));
    if (generatedKey) opts.onGeneratedKey?.(generatedKey);
  }

  // Only a worker listens there; the others serve /healthz and /metrics on PORT.
  if (role !== "worker" && config.workerPort !== undefined)
    log.warn(
      { port: config.port },
      "KLEN_WORKER_PORT is for --role worker only: this process serves /healthz and /metrics on PORT",
    );
  const dispatcher = role === "api" ? undefined : new Dispatcher(ctx, opts.dispatcher);
  let app: FastifyInstance | undefined;
  let address: string | undefined;
  try {
    if (role !== "worker") {
      app = await buildApp(ctx);
      address = await listenOn(app, config.host, config.port, "PORT");
      // PORT=0 picks a free port: the default public URL names the one picked, not port 0.
      if (config.port === 0 && config.publicUrl === "http://localhost:0")
        config.publicUrl = `http://localhost:${new URL(address).port}`;
      await recordApiPublicUrl(store.db, config.publicUrl).catch((err: unknown) =>
        log.warn({ err }, "could not record this process's public URL for workers"),
      );
    } else if (config.workerPort !== undefined) {
      app = await buildApp(ctx, { workerOnly: true });
      address = await listenOn(app, config.host, config.workerPort, "KLEN_WORKER_PORT");
    }
  } catch (err) {
    // Its port taken, this process never ran: the next start is not compared with it, and the
    // account it made, whose key it never printed, is undone so that the next start prints one.
    await sharedRecord.remove().catch(() => {});
    if (generatedKey) await undoFirstAccount(store, generatedKey).catch(() => {});
    await store.close().catch(() => {});
    throw err;
  }
  dispatcher?.start();
  beat.start();
  if (dispatcher && !config.dev) void warnDevOnlyEndpoints(ctx);
  void warnUnsharedBlobs(ctx);
  // Background work of worker processes: generated summaries, the retention purge, and test
  // calls whose process died mid-run.
  const summaries = role === "api" ? undefined : new SummaryWorker(ctx);
  const retention = role === "api" ? undefined : retentionJob(ctx);
  const testCalls = role === "api" ? undefined : testCallResumer(ctx);
  // Recovers too large for their request, a batch of calls at a time.
  const recovers = role === "api" ? undefined : recoverJobs(ctx);
  // Values stored in clear before KLEN_ENCRYPTION_KEY was set are sealed, a page at a time.
  const reseal = role === "api" ? undefined : resealJob(ctx);
  // A process without KLEN_ENCRYPTION_KEY beside one that has it can read neither the secrets nor
  // the bodies the other seals (its attempts crashed, leases ran out, nothing said why): it says
  // so, reports unhealthy, and `serve` stops it; started again without the key it is refused.
  const keyWatch = store.cipher ? undefined : encryptionWatch(ctx, opts.onFatal);
  summaries?.start();
  retention?.start();
  testCalls?.start();
  recovers?.start();
  reseal?.start();
  keyWatch?.start();

  return {
    ctx,
    app,
    dispatcher,
    generatedKey,
    address,
    async stop(graceMs = 10_000) {
      // Side by side, each within the grace period: requests in flight, attempts in flight,
      // summaries being made.
      await Promise.all([
        app && closeApp(app, graceMs),
        dispatcher?.stop(graceMs),
        (async () => {
          // A test call waiting for its summary stops waiting and hands its run over.
          stopTestCalls(ctx);
          await summaries?.stop(graceMs);
        })(),
        // A recover in hand stops after its batch and hands its job back.
        recovers?.stop(),
      ]);
      await retention?.stop();
      await reseal?.stop();
      await keyWatch?.stop();
      await testCalls?.stop();
      await handOverTestCalls(ctx);
      await beat.stop();
      await sharedRecord
        .remove()
        .catch((err: unknown) => log.warn({ err }, "could not remove this process's shared-settings record"));
      await store.close();
    },
  };
}
