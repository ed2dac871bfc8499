import type { Config } from "./config.js";
import type { Logger } from "./log.js";
import type { Db } from "./storage/types.js";
import { newId } from "./util/ids.js";
import { formatDuration } from "./util/units.js";

/**
 * `settings` rows `shared_config:<process>`: the shared settings of each process running on the
 * database, written at start and again every `SHARED_BEAT_MS` while it runs, removed when it stops.
 * (`shared_config` alone is the single record of versions before: the latest start's.)
 */
const PREFIX = "shared_config:";
const LEGACY = "shared_config";

/** How often a running process writes its record again. */
export const SHARED_BEAT_MS = 30_000;
/** A record not written again for this long is a process that is gone (killed, its host lost). */
export const SHARED_LIVE_MS = 3 * SHARED_BEAT_MS;
/** Records of processes gone this long are deleted at the next start. */
const SHARED_FORGET_MS = 86_400_000;

/**
 * The settings every process on one database must agree on, as the variables name them: each
 * worker applies its own retry schedule and disable period to the attempts it records, signs the
 * URLs of the events it makes (generated summaries, test calls it carries on) with its own public
 * URL and TTL, and so on. A worker on `1s` beside one on the full schedule gave deliveries up after
 * two attempts, and a worker without KLEN_PUBLIC_URL sent `http://localhost:8080/…` URLs.
 */
function shared(config: Config, role: string): Record<string, string> {
  // Not a setting of its own to compare: a worker without KLEN_PUBLIC_URL follows the API
  // processes' (`apiPublicUrl`), and with PORT=0 the URL is known only once the process listens.
  const ownUrl = config.publicUrlGiven || (role !== "worker" && config.port !== 0);
  return {
    KLEN_RETRY_SCHEDULE: config.retrySchedule.map(formatDuration).join(","),
    KLEN_DISABLE_AFTER: formatDuration(config.disableAfterMs),
    KLEN_DELIVERY_TIMEOUT: formatDuration(config.deliveryTimeoutMs),
    KLEN_LEASE: formatDuration(config.leaseMs),
    ...(ownUrl ? { KLEN_PUBLIC_URL: config.publicUrl } : {}),
    KLEN_URL_TTL: formatDuration(config.urlTtlMs),
    KLEN_INLINE_LIMIT: String(config.inlineLimit),
    KLEN_RETENTION: formatDuration(config.retentionMs),
    KLEN_DEV: config.dev ? "on" : "off",
    KLEN_BLOB_STORE: config.blobStore,
  };
}

/** A process's record of its shared settings: written again by `beat`, removed by `remove`. */
export interface SharedConfigRecord {
  beat(now?: number): Promise<void>;
  remove(): Promise<void>;
}

/**
 * At start: warns, naming each variable and both values, where this process's shared settings
 * differ from those of any process running on the database (its record written within
 * `SHARED_LIVE_MS`), then records its own. A warning, not a refusal: changing a setting means
 * restarting every process, one after another. The caller writes the record again every
 * `SHARED_BEAT_MS` (`beat`) and removes it on a graceful stop or a start that fails (`remove`).
 */
export async function checkSharedConfig(
  db: Db,
  config: Config,
  log: Logger,
  opts: { role?: string; now?: number } = {},
): Promise<SharedConfigRecord> {
  const role = opts.role ?? "all";
  const now = opts.now ?? Date.now();
  const mine = shared(config, role);
  await db
    .deleteFrom("settings")
    .where("name", "like", `${PREFIX}%`)
    .where("created_at", "<", now - SHARED_FORGET_MS)
    .execute();
  const rows = await db
    .selectFrom("settings")
    .select(["name", "value", "created_at"])
    .where((eb) => eb.or([eb("name", "like", `${PREFIX}%`), eb("name", "=", LEGACY)]))
    .execute();
  const warned = new Set<string>();
  for (const row of rows) {
    const legacy = row.name === LEGACY;
    // The single record of an older version is compared with once, as it was, then replaced.
    if (!legacy && row.created_at < now - SHARED_LIVE_MS) continue;
    let theirs: Record<string, unknown> = {};
    let started = row.created_at;
    try {
      const parsed = JSON.parse(row.value) as { settings?: Record<string, unknown>; started_at?: number };
      theirs = legacy ? (parsed as Record<string, unknown>) : (parsed.settings ?? {});
      if (!legacy && typeof parsed.started_at === "number") started = parsed.started_at;
    } catch {
      // Unreadable: nothing to compare with.
    }
    for (const variable of Object.keys(mine)) {
      const there = theirs[variable];
      // Each value that differs is said once, however many processes have it.
      const seen = `${variable}\n${String(there)}`;
      if (!(variable in theirs) || there === mine[variable] || warned.has(seen)) continue;
      warned.add(seen);
      log.warn(
        { variable, here: mine[variable], there, there_started: new Date(Number(started)).toISOString() },
        `${variable} differs from a process running on this database: every process must have the same value (docs/scaling.md); restart each with it`,
      );
    }
  }
  if (rows.some((r) => r.name === LEGACY))
    await db.deleteFrom("settings").where("name", "=", LEGACY).execute();
  const name = `${PREFIX}${newId("proc", now)}`;
  const write = (at: number) =>
    putSetting(db, name, JSON.stringify({ settings: shared(config, role), started_at: now, role }), at);
  await write(now);
  return {
    beat: (at = Date.now()) => write(at),
    remove: async () => {
      await db.deleteFrom("settings").where("name", "=", name).execute();
    },
  };
}

/** `settings` row: the public URL of the process that serves the API and started last. */
const API_PUBLIC_URL = "api_public_url";

/**
 * Recorded by every process that serves the API once it listens: the base of the URLs it serves
 * blobs at, which a worker without KLEN_PUBLIC_URL then uses for the URLs it makes (`apiPublicUrl`).
 */
export function recordApiPublicUrl(db: Db, url: string, now = Date.now()): Promise<void> {
  return putSetting(db, API_PUBLIC_URL, url, now);
}

/** Writes the `settings` row `name`, made or replaced. */
async function putSetting(db: Db, name: string, value: string, at: number): Promise<void> {
  await db
    .insertInto("settings")
    .values({ name, value, created_at: at })
    .onConflict((oc) => oc.column("name").doUpdateSet({ value, created_at: at }))
    .execute();
}

/**
 * The public URL an API process recorded, for a `--role worker` started without KLEN_PUBLIC_URL:
 * its default, `http://localhost:$PORT`, names the worker's own port, where nothing serves blobs
 * (the URLs of generated summaries and of test calls it carried on pointed there).
 */
export async function apiPublicUrl(db: Db): Promise<string | undefined> {
  const row = await db
    .selectFrom("settings")
    .select("value")
    .where("name", "=", API_PUBLIC_URL)
    .executeTakeFirst();
  return row?.value;
}
