import type { Config } from "./config.js";
import type { Logger } from "./log.js";
import type { Db } from "./storage/types.js";
import { formatDuration } from "./util/units.js";

/** `settings` row: the shared settings of the process that started last. */
const NAME = "shared_config";

/**
 * The settings every process on one database must agree on, as the variables name them: each
 * worker applies its own retry schedule and disable period to the attempts it records, signs the
 * URLs of the events it makes (generated summaries, test calls it carries on) with its own public
 * URL and TTL, and so on. A worker on `1s` beside one on the full schedule gave deliveries up after
 * two attempts, and a worker without KLEN_PUBLIC_URL sent `http://localhost:8080/…` URLs.
 */
function shared(config: Config): Record<string, string> {
  return {
    KLEN_RETRY_SCHEDULE: config.retrySchedule.map(formatDuration).join(","),
    KLEN_DISABLE_AFTER: formatDuration(config.disableAfterMs),
    KLEN_DELIVERY_TIMEOUT: formatDuration(config.deliveryTimeoutMs),
    KLEN_LEASE: formatDuration(config.leaseMs),
    // With PORT=0 and no KLEN_PUBLIC_URL the URL is not known until the process listens (the
    // port picked then, `recordApiPublicUrl`): `http://localhost:0` is no one's URL to compare with.
    ...(config.port === 0 && !config.publicUrlGiven ? {} : { KLEN_PUBLIC_URL: config.publicUrl }),
    KLEN_URL_TTL: formatDuration(config.urlTtlMs),
    KLEN_INLINE_LIMIT: String(config.inlineLimit),
    KLEN_RETENTION: formatDuration(config.retentionMs),
    KLEN_DEV: config.dev ? "on" : "off",
    KLEN_BLOB_STORE: config.blobStore,
  };
}

/**
 * At start: warns, naming each variable and both values, where this process's shared settings
 * differ from those of the process that started last on the database, then records its own. A
 * warning, not a refusal: changing a setting means restarting every process, one after another.
 * Returns what removes the record on a graceful stop (see `removeRecord`).
 */
export async function checkSharedConfig(
  db: Db,
  config: Config,
  log: Logger,
  now = Date.now(),
): Promise<() => Promise<void>> {
  const mine = shared(config);
  const row = await db
    .selectFrom("settings")
    .select(["value", "created_at"])
    .where("name", "=", NAME)
    .executeTakeFirst();
  if (row) {
    let theirs: Record<string, unknown> = {};
    try {
      theirs = JSON.parse(row.value) as Record<string, unknown>;
    } catch {
      // Unreadable: recorded again below.
    }
    const differs = Object.keys(mine).filter((k) => k in theirs && theirs[k] !== mine[k]);
    for (const variable of differs)
      log.warn(
        {
          variable,
          here: mine[variable],
          there: theirs[variable],
          there_started: new Date(Number(row.created_at)).toISOString(),
        },
        `${variable} differs from the process that started before this one on this database: every process must have the same value (docs/scaling.md); restart each with it`,
      );
  }
  const value = JSON.stringify(mine);
  await db
    .insertInto("settings")
    .values({ name: NAME, value, created_at: now })
    .onConflict((oc) => oc.column("name").doUpdateSet({ value, created_at: now }))
    .execute();
  return () => removeRecord(db, { value, created_at: now });
}

/**
 * A process stopping gracefully while its record is still the latest removes it: a single process
 * restarted with new settings (dev mode, another port) is then not warned about itself. The
 * record it replaced is not put back: its process may have died, and would be warned about at
 * every start from then on. So the next start is compared with no one, at the cost of not hearing
 * again about a process that still runs with other settings (the first start beside it was warned).
 */
async function removeRecord(db: Db, mine: { value: string; created_at: number }): Promise<void> {
  await db
    .deleteFrom("settings")
    .where("name", "=", NAME)
    .where("value", "=", mine.value)
    .where("created_at", "=", mine.created_at)
    .execute();
}

/** `settings` row: the public URL of the process that serves the API and started last. */
const API_PUBLIC_URL = "api_public_url";

/**
 * Recorded by every process that serves the API once it listens: the base of the URLs it serves
 * blobs at, which a worker without KLEN_PUBLIC_URL then uses for the URLs it makes (`apiPublicUrl`).
 */
export async function recordApiPublicUrl(db: Db, url: string, now = Date.now()): Promise<void> {
  await db
    .insertInto("settings")
    .values({ name: API_PUBLIC_URL, value: url, created_at: now })
    .onConflict((oc) => oc.column("name").doUpdateSet({ value: url, created_at: now }))
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
