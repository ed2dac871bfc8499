import { type Stats, statSync } from "node:fs";
import { isIP } from "node:net";
import { availableParallelism } from "node:os";
import { dirname, resolve } from "node:path";
import { formatDuration, parseDuration, parseSchedule, parseSize } from "./util/units.js";

/** Every setting of PRODUCT.md §12, parsed once at start-up. */
export interface Config {
  port: number;
  host: string;
  databaseUrl: string;
  dataDir: string;
  /** Where recordings and long texts are kept: files under KLEN_DATA_DIR, or the database. */
  blobStore: "local" | "database";
  apiKey: string | undefined;
  dev: boolean;
  workerPort: number | undefined;
  publicUrl: string;
  /** KLEN_PUBLIC_URL was set (not the default from PORT). */
  publicUrlGiven: boolean;
  /** Delays after the immediate first attempt, in ms. */
  retrySchedule: number[];
  deliveryTimeoutMs: number;
  leaseMs: number;
  /** PostgreSQL: how long a query may go unanswered before its connection is dropped. */
  databaseTimeoutMs: number;
  disableAfterMs: number;
  inlineLimit: number;
  urlTtlMs: number;
  retentionMs: number;
  encryptionKey: string | undefined;
  /** With it, `/metrics` answers only `Authorization: Bearer <this>`. */
  metricsToken: string | undefined;
  maxBody: number;
  maxRecording: number;
  rateLimit: number;
  /** Webhooks are sent from a thread of their own (send-thread.ts) rather than the event loop. */
  senderThread: boolean;
  /** Deliveries a recover re-opens in its own request, and about how many per background batch. */
  recoverBatch: number;
  /** How long a test call waits for its generated summary before it sends the recording anyway. */
  testCallSummaryWaitMs: number;
  summary: { url: string; model: string; apiKey: string } | undefined;
  benchDatabaseUrl: string | undefined;
}

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    message: string,
  ) {
    super(`${variable}: ${message}`);
  }
}

type Env = Record<string, string | undefined>;

function read<T>(env: Env, name: string, fallback: string, parse: (v: string) => T): T {
  const raw = env[name];
  const text = raw === undefined || raw === "" ? fallback : raw;
  try {
    return parse(text);
  } catch (err) {
    throw new ConfigError(name, (err as Error).message);
  }
}

function bool(v: string): boolean {
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off|)$/i.test(v)) return false;
  throw new Error(`not a boolean: "${v}" (use 1/true or 0/false)`);
}

function port(v: string): number {
  // Decimal digits only: Number() would also take "0x50", "1e3" or " 80 ".
  const n = /^\d{1,5}$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`not a port: "${v}"`);
  return n;
}

function blobStoreKind(v: string): "local" | "database" {
  if (v === "local" || v === "database") return v;
  throw new Error(`not a blob store: "${v}" (use local or database)`);
}

/** An IP address or a host name (letters, digits, hyphens, dots): what a server can listen on. */
function host(v: string): string {
  if (
    isIP(v) !== 0 ||
    /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(v)
  )
    return v;
  throw new Error(`not an IP address or host name: "${v}"`);
}

/** The parser, and the value must be more than 0 (a TTL of 0 would make every URL expired at once). */
function positive(parse: (v: string) => number) {
  return (v: string) => {
    const n = parse(v);
    if (n <= 0) throw new Error(`must be more than 0, got "${v}"`);
    return n;
  };
}

/**
 * Node's timers hold at most 2^31 - 1 ms (24.8 days): a longer one fires after 1 ms, with only a
 * warning (a 25-day KLEN_DELIVERY_TIMEOUT timed every attempt out at once). Settings that become
 * timers stop below it; the others at 100 years (a URL's expiry stays a safe integer).
 */
const TIMER_MAX_MS = 24 * 86_400_000;
const DURATION_MAX_MS = 36_500 * 86_400_000;

function atMost(parse: (v: string) => number, maxMs: number) {
  return (v: string) => {
    const n = parse(v);
    if (n > maxMs) throw new Error(`must be at most ${formatDuration(maxMs)}, got "${v}"`);
    return n;
  };
}
/** A positive duration that becomes a timer. */
const timerDuration = atMost(positive(parseDuration), TIMER_MAX_MS);
/** A positive duration that is only added to times. */
const longDuration = atMost(positive(parseDuration), DURATION_MAX_MS);

const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"];

function logLevel(v: string): string {
  if (!LOG_LEVELS.includes(v)) throw new Error(`not a log level: "${v}" (one of ${LOG_LEVELS.join(", ")})`);
  return v;
}

/** A batch's call ids are bound one parameter each: SQLite takes at most 32,766 in a statement. */
function recoverBatch(v: string): number {
  if (!/^\d+$/.test(v)) throw new Error(`not a whole number: "${v}"`);
  const n = Number(v);
  if (n < 1 || n > 10_000) throw new Error(`must be from 1 to 10000, got "${v}"`);
  return n;
}

function nonNegativeInt(v: string): number {
  // Digits only: Number() also read "0x10", "1e3" and "2.5".
  const n = /^\s*\d+\s*$/.test(v) ? Number(v) : Number.NaN;
  if (!Number.isSafeInteger(n)) throw new Error(`not a whole number of 0 or more: "${v}"`);
  return n;
}

/**
 * A database URL as it may be printed: the password of its user info as `***`, the value of a
 * `password` (or `sslpassword`) query parameter, and any `#fragment` (part of a password with an
 * unencoded `#`). A URL that parses is masked by its parts, so an `@` in its query leaves the host
 * shown; one that does not (an unencoded `#`, `/` or `?` in the password: when it gets printed)
 * is taken to have its user info run to its last `@`.
 */
export function withoutPassword(v: string): string {
  const start = v.indexOf("://");
  if (start < 0) return v;
  // Parsed, unless an @ the parser did not take for the end of user info is there: a password
  // of digits and a / ? or # (`klen:2024/Spring!@host`) reads as a port and a path, and was
  // printed whole. Then the user info runs to the last @ (an @ in a query hides the host too).
  const parsed = URL.canParse(v) ? new URL(v) : undefined;
  if (parsed && (parsed.username !== "" || !v.slice(start + 3).includes("@"))) {
    const u = parsed;
    if (u.password) u.password = "***";
    for (const k of [...u.searchParams.keys()]) if (/^(ssl)?password$/i.test(k)) u.searchParams.set(k, "***");
    if (u.hash) u.hash = "***";
    return u.toString();
  }
  let rest = v.slice(start + 3);
  const at = rest.lastIndexOf("@");
  const colon = rest.indexOf(":");
  if (at >= 0 && colon >= 0 && colon < at) rest = `${rest.slice(0, colon)}:***${rest.slice(at)}`;
  rest = rest.replace(/([?&](?:ssl)?password=).*$/i, "$1***").replace(/#.*$/, "#***");
  return `${v.slice(0, start + 3)}${rest}`;
}

function databaseUrl(v: string): string {
  if (/^sqlite:.+/.test(v)) return v;
  if (/^postgres(ql)?:\/\/.+/.test(v)) {
    // pg would otherwise fail later with a bare "Invalid URL" that names nothing.
    if (!URL.canParse(v))
      throw new Error(
        `not a valid postgres:// URL: "${withoutPassword(v)}" (percent-encode a # / ? @ or : in the user name or password: # is %23)`,
      );
    return v;
  }
  throw new Error(`expected sqlite:<path> or postgres://…, got "${withoutPassword(v)}"`);
}

function schedule(v: string): number[] {
  const s = parseSchedule(v);
  if (s.length === 0 && v.trim() !== "") throw new Error("empty schedule");
  if (s.some((ms) => ms > DURATION_MAX_MS))
    throw new Error(`each delay must be at most ${formatDuration(DURATION_MAX_MS)}, got "${v}"`);
  return s;
}

/**
 * KLEN_SUMMARY_URL: an http(s) URL without credentials. Its value is not quoted back in the error:
 * a key pasted into the wrong variable would end up in the logs.
 */
function checkSummaryUrl(value: string): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError("KLEN_SUMMARY_URL", "not a URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:")
    throw new ConfigError("KLEN_SUMMARY_URL", `not an http(s) URL (scheme ${url.protocol})`);
  if (url.username || url.password)
    throw new ConfigError(
      "KLEN_SUMMARY_URL",
      "must not carry credentials (user:password@); put the key in KLEN_SUMMARY_API_KEY",
    );
}

/**
 * The base of pre-signed URLs, which every `*_url` in an event body starts with: an absolute
 * http(s) URL that a receiver can fetch once a path is appended, so no space, query, fragment or
 * credentials.
 */
function checkPublicUrl(value: string): void {
  const bad = (why: string) => new ConfigError("KLEN_PUBLIC_URL", `${why}: "${value}"`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw bad("not a URL");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw bad("not an http(s) URL");
  if (/[\s?#]/.test(value))
    throw bad("must have no spaces, query or fragment (it is the base of every blob URL)");
  if (url.username || url.password)
    throw new ConfigError("KLEN_PUBLIC_URL", "must not carry credentials (user:password@)");
}

/**
 * The folder of the SQLite file and the blobs: a folder, or a path where one can be made (the
 * server makes it when it first opens the database). A file in its place, or under a file, stops
 * start-up here rather than at the first write.
 */
function checkDataDir(dir: string): void {
  let path = dir;
  for (;;) {
    let stat: Stats | undefined;
    try {
      stat = statSync(path);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ENOTDIR") {
        throw new ConfigError("KLEN_DATA_DIR", `${dir}: ${(err as Error).message}`);
      }
    }
    if (stat) {
      if (!stat.isDirectory())
        throw new ConfigError(
          "KLEN_DATA_DIR",
          path === dir ? `${dir} is not a folder` : `${dir} cannot be made: ${path} is not a folder`,
        );
      return;
    }
    const parent = dirname(path);
    if (parent === path) return;
    path = parent;
  }
}

/**
 * `KLEN_API_KEY`: sent back as `Authorization: Bearer <key>`, so one run of visible ASCII; a key
 * with a space or a line break would be stored but could never sign in. The value is not quoted.
 */
function apiKey(value: string | undefined): string | undefined {
  if (!value) return undefined;
  if (!/^[\x21-\x7e]+$/.test(value))
    throw new ConfigError(
      "KLEN_API_KEY",
      "must be one run of visible ASCII characters (no spaces, line breaks or other characters), as it is sent in an Authorization header",
    );
  return value;
}

/**
 * A database that could not be opened, named with the variable it came from (without its
 * password): `KLEN_DATABASE_URL`, or `KLEN_DATA_DIR` for the default SQLite file.
 */
export function cannotOpenDatabase(databaseUrl: string, err: unknown, env: Env = process.env): Error {
  const from = env.KLEN_DATABASE_URL ? "KLEN_DATABASE_URL" : "KLEN_DATA_DIR";
  return new Error(
    `cannot open the database ${withoutPassword(databaseUrl)} (${from}): ${(err as Error).message}`,
    {
      cause: err,
    },
  );
}

/** Reads the configuration from the environment; throws ConfigError naming the variable. */
export function loadConfig(env: Env = process.env): Config {
  const dataDir = resolve(env.KLEN_DATA_DIR || "./data");
  checkDataDir(dataDir);
  // Read by the logger itself (log.ts); checked here so a bad value names its variable.
  read(env, "LOG_LEVEL", "info", logLevel);
  const p = read(env, "PORT", "8080", port);
  const timeout = read(env, "KLEN_DELIVERY_TIMEOUT", "15s", timerDuration);
  const summaryUrl = env.KLEN_SUMMARY_URL || undefined;
  const summaryModel = env.KLEN_SUMMARY_MODEL || undefined;
  const summaryKey = env.KLEN_SUMMARY_API_KEY || undefined;
  if (summaryUrl) checkSummaryUrl(summaryUrl);
  if (summaryUrl && !summaryModel)
    throw new ConfigError("KLEN_SUMMARY_MODEL", "required with KLEN_SUMMARY_URL");
  // Either without the URL was silently ignored: summaries stayed the built-in extractive ones.
  if (!summaryUrl && (summaryModel || summaryKey))
    throw new ConfigError(
      "KLEN_SUMMARY_URL",
      `required with ${summaryModel ? "KLEN_SUMMARY_MODEL" : "KLEN_SUMMARY_API_KEY"} (the chat-completions service's base URL)`,
    );
  const workerPort = env.KLEN_WORKER_PORT ? read(env, "KLEN_WORKER_PORT", "", port) : undefined;
  const publicUrl = (env.KLEN_PUBLIC_URL || `http://localhost:${p}`).replace(/\/+$/, "");
  checkPublicUrl(publicUrl);
  // A lease that can end while its attempt is still allowed to run would let a second worker send
  // the same delivery while the first is still waiting for the answer: a duplicate by design.
  const leaseMs = env.KLEN_LEASE
    ? read(env, "KLEN_LEASE", "", atMost(parseDuration, TIMER_MAX_MS))
    : timeout + 30_000;
  if (leaseMs <= timeout) {
    throw new ConfigError(
      "KLEN_LEASE",
      `must be longer than KLEN_DELIVERY_TIMEOUT (${timeout} ms), with a margin for recording the outcome; default is the timeout + 30s`,
    );
  }
  const encryptionKey = env.KLEN_ENCRYPTION_KEY || undefined;
  if (encryptionKey !== undefined && encryptionKey.length < 16) {
    throw new ConfigError("KLEN_ENCRYPTION_KEY", "must be at least 16 characters");
  }
  return {
    port: p,
    host: read(env, "KLEN_HOST", "127.0.0.1", host),
    databaseUrl: read(env, "KLEN_DATABASE_URL", `sqlite:${dataDir}/klen.db`, databaseUrl),
    dataDir,
    blobStore: read(env, "KLEN_BLOB_STORE", "local", blobStoreKind),
    apiKey: apiKey(env.KLEN_API_KEY),
    dev: read(env, "KLEN_DEV", "0", bool),
    workerPort,
    publicUrl,
    publicUrlGiven: Boolean(env.KLEN_PUBLIC_URL),
    retrySchedule: read(env, "KLEN_RETRY_SCHEDULE", "5s,5m,30m,2h,5h,10h,10h", schedule),
    deliveryTimeoutMs: timeout,
    leaseMs,
    databaseTimeoutMs: read(env, "KLEN_DATABASE_TIMEOUT", "20s", timerDuration),
    disableAfterMs: read(env, "KLEN_DISABLE_AFTER", "5d", longDuration),
    inlineLimit: read(env, "KLEN_INLINE_LIMIT", "64KiB", parseSize),
    urlTtlMs: read(env, "KLEN_URL_TTL", "7d", longDuration),
    retentionMs: read(env, "KLEN_RETENTION", "30d", longDuration),
    encryptionKey,
    metricsToken: env.KLEN_METRICS_TOKEN || undefined,
    maxBody: read(env, "KLEN_MAX_BODY", "1MiB", positive(parseSize)),
    maxRecording: read(env, "KLEN_MAX_RECORDING", "200MiB", positive(parseSize)),
    testCallSummaryWaitMs: read(env, "KLEN_TEST_CALL_SUMMARY_WAIT", "8s", timerDuration),
    rateLimit: read(env, "KLEN_RATE_LIMIT", "0", nonNegativeInt),
    senderThread: read(env, "KLEN_SENDER_THREAD", availableParallelism() > 1 ? "1" : "0", bool),
    recoverBatch: read(env, "KLEN_RECOVER_BATCH", "2000", recoverBatch),
    summary: summaryUrl ? { url: summaryUrl, model: summaryModel!, apiKey: summaryKey ?? "" } : undefined,
    benchDatabaseUrl: env.KLEN_BENCH_DATABASE_URL || undefined,
  };
}
