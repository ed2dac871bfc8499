import { memo } from "../util/memo.js";

/**
 * An endpoint's rotated-out secrets, still signing until each one's grace period ends. Rotating
 * again keeps the earlier ones until their own end (a second rotation does not cut the first one's
 * grace short); rotating with no grace drops them all, for a secret that leaked.
 *
 * The newest rotated-out secret is also written where code from before migration 7 reads it
 * (`previous_secret`), so during a rolling upgrade older processes still sign with it. One gap is
 * left: an older process rotating with no grace clears only that column, and newer ones go on
 * signing with the list's secrets until their grace ends.
 */

/** At most this many rotated-out secrets sign beside the current one (the oldest go first). */
export const MAX_PREVIOUS_SECRETS = 5;

export interface PreviousSecret {
  secret: string;
  /** Unix ms. */
  expires_at: number;
}

interface SecretColumns {
  /** JSON list of `PreviousSecret`, newest first (migration 7). */
  previous_secrets: string | null;
  /** One rotated-out secret as written before migration 7, still read. */
  previous_secret: string | null;
  previous_secret_expires_at: number | null;
}

/**
 * The stored list, parsed once per distinct text: the dispatcher asks for every attempt, and the
 * column keeps its (expired) entries until the next rotation. Shared: never mutated.
 */
const parseList = memo((json): readonly PreviousSecret[] => JSON.parse(json) as PreviousSecret[]);

/** The rotated-out secrets still valid at `now`, newest first. */
export function previousSecrets(e: SecretColumns, now: number): PreviousSecret[] {
  const listed = e.previous_secrets ? parseList(e.previous_secrets) : [];
  const legacy =
    e.previous_secret !== null &&
    e.previous_secret_expires_at !== null &&
    !listed.some((p) => p.secret === e.previous_secret)
      ? [{ secret: e.previous_secret, expires_at: Number(e.previous_secret_expires_at) }]
      : [];
  return [...listed, ...legacy].filter((p) => p.expires_at > now);
}

/** When the last rotated-out secret stops signing, or undefined when none signs any more. */
export function previousSecretsExpireAt(e: SecretColumns, now: number): number | undefined {
  const valid = previousSecrets(e, now);
  return valid.length === 0 ? undefined : Math.max(...valid.map((p) => p.expires_at));
}

/** The columns to write when `e.secret` is rotated out with `graceSeconds` of grace. */
export function rotatedOut(
  e: SecretColumns & { secret: string },
  now: number,
  graceSeconds: number,
): SecretColumns {
  const kept =
    graceSeconds > 0
      ? [{ secret: e.secret, expires_at: now + graceSeconds * 1000 }, ...previousSecrets(e, now)].slice(
          0,
          MAX_PREVIOUS_SECRETS,
        )
      : [];
  return {
    previous_secrets: kept.length > 0 ? JSON.stringify(kept) : null,
    previous_secret: kept[0]?.secret ?? null,
    previous_secret_expires_at: kept[0]?.expires_at ?? null,
  };
}
