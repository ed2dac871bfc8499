/**
 * Numbered plain-SQL migrations, written once for both dialects. The two differences are the
 * auto-increment key and the 64-bit integer type, substituted from the dialect's table.
 * A migration is never edited once released: add the next number instead.
 */
export interface MigrationDialect {
  /** Column definition of an auto-increment integer primary key. */
  serial: string;
  /** 64-bit integer type (times in ms do not fit PostgreSQL's INTEGER). */
  bigint: string;
  /** For what has no common syntax (triggers). */
  name: "sqlite" | "postgres";
}

/**
 * The attempt log's row for a claim whose lease ran out before its outcome was recorded
 * (migration 14): the error text, and the columns a trigger fills from the delivery's old and new
 * rows. The attempt's number is the new `attempt_count` (the claim counts it); it started when the
 * old lease was taken (`leased_at`, set by claims only) and is given the lease's length as its
 * duration. Whether its request was sent is not known: the process that knew is gone.
 */
export const LEASE_EXPIRED = "lease_expired";
/** How the attempt log's `error` of such a row starts (`code: message`): `LIKE` it. */
export const LEASE_EXPIRED_LIKE = `${LEASE_EXPIRED}:%`;
const LEASE_EXPIRED_ERROR = `${LEASE_EXPIRED}: its process stopped or stalled before recording an outcome; the request may have reached the endpoint, or may not have been sent`;
const leaseExpiredRow = (o: string, n: string, greatest: string) =>
  `${n}.id, ${n}.attempt_count, COALESCE(${o}.leased_at, ${o}.updated_at),
    COALESCE((SELECT url FROM endpoints WHERE id = ${n}.endpoint_id), ''),
    '{"webhook-id":"' || ${n}.event_id || '"}', NULL, NULL,
    ${greatest}(0, ${o}.leased_until - COALESCE(${o}.leased_at, ${o}.updated_at)),
    '${LEASE_EXPIRED_ERROR}'`;

/** Migration 14's trigger (and function, on PostgreSQL), as 14 made it and 16 makes it again. */
function leaseExpiredTrigger(d: MigrationDialect): string {
  const insert = `INSERT INTO attempts (delivery_id, number, started_at, url, request_headers, status_code,
                        response_body, duration_ms, error)`;
  if (d.name === "sqlite")
    return `
CREATE TRIGGER deliveries_lease_expired AFTER UPDATE OF claim_token ON deliveries
FOR EACH ROW WHEN OLD.leased_until IS NOT NULL
BEGIN
  ${insert}
  VALUES (${leaseExpiredRow("OLD", "NEW", "MAX")});
END;
`;
  return `
CREATE FUNCTION klen_log_lease_expired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  ${insert}
  VALUES (${leaseExpiredRow("OLD", "NEW", "GREATEST")});
  RETURN NULL;
END $$;
CREATE TRIGGER deliveries_lease_expired AFTER UPDATE OF claim_token ON deliveries
FOR EACH ROW WHEN (OLD.leased_until IS NOT NULL) EXECUTE FUNCTION klen_log_lease_expired();
`;
}

export interface Migration {
  id: number;
  name: string;
  /** The columns of `reads`' tables as the database has them now (for a repair: see 16). */
  sql: (d: MigrationDialect, columns: ReadonlyMap<string, ReadonlySet<string>>) => string;
  /** Tables whose columns `sql` is given. */
  reads?: readonly string[];
}

export const migrations: Migration[] = [
  {
    id: 1,
    name: "initial",
    sql: (d) => `
CREATE TABLE accounts (
  id ${d.serial},
  name TEXT NOT NULL,
  auto_summary INTEGER NOT NULL DEFAULT 0,
  created_at ${d.bigint} NOT NULL
);
CREATE TABLE api_keys (
  id ${d.serial},
  account_id INTEGER NOT NULL REFERENCES accounts(id),
  key_hash TEXT NOT NULL UNIQUE,
  prefix TEXT NOT NULL,
  created_at ${d.bigint} NOT NULL
);
CREATE TABLE agents (
  id ${d.serial},
  account_id INTEGER NOT NULL REFERENCES accounts(id),
  name TEXT NOT NULL,
  assistant_id TEXT,
  created_at ${d.bigint} NOT NULL,
  deleted_at ${d.bigint}
);
CREATE INDEX agents_account ON agents (account_id, id);
CREATE TABLE contacts (
  id ${d.serial},
  account_id INTEGER NOT NULL REFERENCES accounts(id),
  name TEXT NOT NULL,
  email TEXT,
  phone_number TEXT,
  created_at ${d.bigint} NOT NULL,
  deleted_at ${d.bigint}
);
CREATE INDEX contacts_account ON contacts (account_id, id);
CREATE INDEX contacts_phone ON contacts (account_id, phone_number);
CREATE TABLE calls (
  id ${d.serial},
  account_id INTEGER NOT NULL REFERENCES accounts(id),
  agent_id INTEGER NOT NULL REFERENCES agents(id),
  type TEXT NOT NULL,
  phone_number TEXT NOT NULL,
  contact_id INTEGER REFERENCES contacts(id),
  klen_call_id TEXT,
  status TEXT NOT NULL,
  assistant_id TEXT,
  started_at ${d.bigint},
  ended_at ${d.bigint},
  failure_reason TEXT,
  ended_reason TEXT,
  brief_summary TEXT,
  transcript_at ${d.bigint},
  summary_at ${d.bigint},
  recording_at ${d.bigint},
  only_endpoint_id TEXT,
  created_at ${d.bigint} NOT NULL,
  updated_at ${d.bigint} NOT NULL
);
CREATE INDEX calls_account ON calls (account_id, id);
CREATE TABLE events (
  seq ${d.serial},
  id TEXT NOT NULL UNIQUE,
  account_id INTEGER NOT NULL,
  call_id INTEGER NOT NULL,
  event_type TEXT NOT NULL,
  payload TEXT NOT NULL,
  created_at ${d.bigint} NOT NULL
);
CREATE INDEX events_account ON events (account_id, seq);
CREATE INDEX events_call ON events (call_id, seq);
CREATE TABLE endpoints (
  id TEXT PRIMARY KEY,
  account_id INTEGER NOT NULL REFERENCES accounts(id),
  url TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  event_types TEXT NOT NULL DEFAULT '[]',
  agent_ids TEXT NOT NULL DEFAULT '[]',
  headers TEXT NOT NULL DEFAULT '{}',
  secret TEXT NOT NULL,
  previous_secret TEXT,
  previous_secret_expires_at ${d.bigint},
  disabled INTEGER NOT NULL DEFAULT 0,
  disabled_reason TEXT,
  failing_since ${d.bigint},
  created_at ${d.bigint} NOT NULL,
  updated_at ${d.bigint} NOT NULL,
  deleted_at ${d.bigint}
);
CREATE INDEX endpoints_account ON endpoints (account_id, id);
CREATE TABLE deliveries (
  id TEXT PRIMARY KEY,
  account_id INTEGER NOT NULL,
  event_id TEXT NOT NULL,
  event_seq ${d.bigint} NOT NULL,
  endpoint_id TEXT NOT NULL,
  call_id INTEGER NOT NULL,
  status TEXT NOT NULL,
  attempt_count INTEGER NOT NULL DEFAULT 0,
  next_attempt_at ${d.bigint},
  claim_token ${d.bigint} NOT NULL DEFAULT 0,
  last_error TEXT,
  created_at ${d.bigint} NOT NULL,
  updated_at ${d.bigint} NOT NULL
);
-- The claim query's index: only pending rows, ordered by when they are due. A row waiting behind
-- an earlier delivery of its call (ordering) has next_attempt_at NULL and sorts out of the way.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
-- The ordering chain: one endpoint, one call, in event order.
CREATE INDEX deliveries_chain ON deliveries (endpoint_id, call_id, event_seq) WHERE status = 'pending';
CREATE INDEX deliveries_account ON deliveries (account_id, id);
CREATE INDEX deliveries_endpoint ON deliveries (endpoint_id, id);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE TABLE attempts (
  id ${d.serial},
  delivery_id TEXT NOT NULL,
  number INTEGER NOT NULL,
  started_at ${d.bigint} NOT NULL,
  url TEXT NOT NULL,
  request_headers TEXT NOT NULL,
  status_code INTEGER,
  response_body TEXT,
  duration_ms INTEGER NOT NULL,
  error TEXT
);
CREATE INDEX attempts_delivery ON attempts (delivery_id, number);
CREATE TABLE idempotency_keys (
  account_id INTEGER NOT NULL,
  key TEXT NOT NULL,
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  status_code INTEGER NOT NULL,
  response_body TEXT NOT NULL,
  created_at ${d.bigint} NOT NULL,
  PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_created ON idempotency_keys (created_at);
CREATE TABLE blobs (
  id TEXT PRIMARY KEY,
  account_id INTEGER NOT NULL,
  call_id INTEGER,
  kind TEXT NOT NULL,
  content_type TEXT NOT NULL,
  size ${d.bigint} NOT NULL,
  path TEXT NOT NULL,
  created_at ${d.bigint} NOT NULL
);
CREATE INDEX blobs_created ON blobs (created_at);
`,
  },
  {
    id: 2,
    name: "settings_and_summary_jobs",
    sql: (d) => `
-- Server-wide values every process must agree on (the blob URL signing key).
CREATE TABLE settings (
  name TEXT PRIMARY KEY,
  value TEXT NOT NULL,
  created_at ${d.bigint} NOT NULL
);
-- Durable summary work: written in the transcript's transaction, deleted in the summary's, so a
-- crash in between loses nothing. status 'pending' until done; 'failed' once given up (kept for
-- the log until retention).
CREATE TABLE summary_jobs (
  call_id INTEGER PRIMARY KEY,
  account_id INTEGER NOT NULL,
  transcript TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at ${d.bigint} NOT NULL,
  last_error TEXT,
  created_at ${d.bigint} NOT NULL,
  updated_at ${d.bigint} NOT NULL
);
CREATE INDEX summary_jobs_due ON summary_jobs (next_attempt_at) WHERE status = 'pending';
`,
  },
  {
    id: 3,
    name: "delivery_lease",
    sql: (d) => `
-- When an attempt is in flight, until when its lease runs (NULL otherwise). A leased delivery and
-- one waiting for its next retry both have next_attempt_at in the future; this tells them apart,
-- so a manual retry never sends a second copy beside an attempt still running.
ALTER TABLE deliveries ADD COLUMN leased_until ${d.bigint};
`,
  },
  {
    id: 4,
    name: "claim_index_with_endpoint",
    sql: () => `
-- The claim skips endpoints this worker already saturates (endpoint_id NOT IN …). With only
-- next_attempt_at in the index, every skipped row cost a table lookup, and a dead endpoint's due
-- rows pile up at the front of the queue: 4 ms per claim at 25,000 of them, 0.23 ms with
-- endpoint_id in the index (bench: isolation scenario).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, endpoint_id) WHERE status = 'pending';
`,
  },
  {
    id: 5,
    name: "test_call_runs",
    sql: (d) => `
-- A test call's run through its workflow (simulator/run.ts), written in the transaction that
-- creates the call and deleted in the one that makes its last step. Whoever runs it holds a lease,
-- renewed by each step in that step's transaction: a process that dies mid-run leaves the lease to
-- run out, and another process (or the same one restarted) carries the run on from the call's state.
CREATE TABLE test_call_runs (
  call_id INTEGER PRIMARY KEY,
  account_id INTEGER NOT NULL,
  agent_name TEXT NOT NULL,
  outcome TEXT NOT NULL,
  transcript_bytes INTEGER,
  attempts INTEGER NOT NULL DEFAULT 0,
  leased_until ${d.bigint} NOT NULL,
  created_at ${d.bigint} NOT NULL
);
CREATE INDEX test_call_runs_lease ON test_call_runs (leased_until);
`,
  },
  {
    id: 6,
    name: "calls_brief_summary_age",
    sql: () => `
-- The retention purge empties the brief summary of calls not updated within the retention period.
-- Calls are never deleted, so without an index that purge read every call ever made on each run
-- (121 ms at 1,000,000 calls, on the event loop of a SQLite server). Only calls still holding a
-- brief summary are in this index: the recent ones.
CREATE INDEX calls_brief_summary_age ON calls (updated_at) WHERE brief_summary IS NOT NULL;
`,
  },
  {
    id: 7,
    name: "endpoint_previous_secrets",
    sql: () => `
-- Every rotated-out secret still within its grace period (JSON list, newest first), so a second
-- rotation does not cut the first one's grace short. Rows rotated before this migration keep their
-- one previous secret in previous_secret / previous_secret_expires_at, still read (endpoints/secrets.ts).
ALTER TABLE endpoints ADD COLUMN previous_secrets TEXT;
`,
  },
  {
    id: 8,
    name: "api_key_prefix_third",
    sql: () => `
-- Lists showed a key's first 12 characters, which is the whole of a short operator key
-- (KLEN_API_KEY=dev_key). Keys not generated by the server now show at most a third of what was
-- kept (accounts.ts keyPrefix); generated keys (klen_sk_…, 51 characters) keep their 12.
UPDATE api_keys SET prefix = substr(prefix, 1, length(prefix) / 3) WHERE prefix NOT LIKE 'klen!_sk!_%' ESCAPE '!';
`,
  },
  {
    id: 9,
    name: "blob_sealed",
    sql: () => `
-- Whether a blob's bytes were encrypted at rest when written (1) or not (0), so that turning
-- KLEN_ENCRYPTION_KEY on later does not serve the earlier, clear blobs "decrypted" into noise.
-- Rows from before stay NULL and are read as the configuration says, as they always were.
ALTER TABLE blobs ADD COLUMN sealed INTEGER;
`,
  },
  {
    id: 10,
    name: "delivery_one_attempt",
    sql: () => `
-- 1 while a delivery re-opened by a manual retry or a recover is on the one attempt those promise:
-- if it fails, the delivery is failed again. Without it a delivery re-opened with retries left
-- (one that had succeeded at its first attempt, say) resumed its schedule, for up to 28 hours.
ALTER TABLE deliveries ADD COLUMN one_attempt INTEGER NOT NULL DEFAULT 0;
`,
  },
  {
    id: 11,
    name: "test_call_run_takeovers",
    sql: () => `
-- How often a test call's run was carried on after its process died. \`attempts\` counts the run's
-- own failures only; a run that keeps killing its process is given up on this count instead.
ALTER TABLE test_call_runs ADD COLUMN takeovers INTEGER NOT NULL DEFAULT 0;
`,
  },
  {
    id: 12,
    name: "endpoint_rate_limit",
    sql: (d) => `
-- An endpoint's rate limit (attempts per second; NULL: none), and the next time, in microseconds
-- (so that high limits lose nothing to rounding), at which a worker may start one of its attempts:
-- every worker takes its start times from this row (delivery/rate.ts), so the limit holds across
-- processes.
ALTER TABLE endpoints ADD COLUMN rate_limit INTEGER;
ALTER TABLE endpoints ADD COLUMN rate_next_us ${d.bigint};
`,
  },
  {
    id: 13,
    name: "default_account_recorded",
    sql: () => `
-- The default account (the one KLEN_API_KEY joins) is known only by its record in settings from
-- now on: looking it up by name at every start let a tenant that renamed itself "default" receive
-- the operator's key. A database without the record gets it here, once, for the account a first
-- start made: the first account, named "default", made after the URL-signing key (a start creates
-- that key before the account; \`accounts create\` on a new database makes an account and no key).
-- Anything else gets no record, and KLEN_API_KEY then makes a new default account.
INSERT INTO settings (name, value, created_at)
SELECT 'default_account_id', CAST(a.id AS TEXT), a.created_at FROM accounts a
WHERE a.id = (SELECT MIN(id) FROM accounts)
  AND a.name = 'default'
  AND EXISTS (SELECT 1 FROM settings k WHERE k.name = 'blob_signing_key' AND k.created_at <= a.created_at)
  AND NOT EXISTS (SELECT 1 FROM settings WHERE name = 'default_account_id');
`,
  },
  {
    id: 14,
    name: "lease_expired_attempts",
    sql: (d) => `
-- Every attempt is logged, including one whose process was killed (or stalled past its lease)
-- before recording the outcome: the claim that takes such a delivery over (its old lease is still
-- set: a finished or handed-back attempt clears it) counts that attempt and, in the same statement
-- through this trigger, logs it as \`lease_expired\`. Only claims bump claim_token, and only
-- claims set leased_at (when the lease was taken: other writes move updated_at).
ALTER TABLE deliveries ADD COLUMN leased_at ${d.bigint};${leaseExpiredTrigger(d)}`,
  },
  {
    id: 15,
    name: "recover_jobs",
    sql: (d) => `
-- A recover too large for one transaction (delivery/recover.ts): written in the request's
-- transaction with its Idempotency-Key, then worked through by worker processes a batch of calls
-- at a time, each batch in its own transaction that also moves \`after_call_id\`. Whoever works on it
-- holds a lease (\`leased_until\`, fenced by \`claim_token\`): a process that dies mid-way leaves the
-- lease to run out and another carries on from the last batch it committed.
CREATE TABLE recover_jobs (
  id TEXT PRIMARY KEY,
  account_id INTEGER NOT NULL,
  endpoint_id TEXT NOT NULL,
  since ${d.bigint} NOT NULL,
  until ${d.bigint} NOT NULL,
  after_call_id ${d.bigint} NOT NULL,
  queued INTEGER NOT NULL DEFAULT 0,
  leased_until ${d.bigint},
  claim_token ${d.bigint} NOT NULL DEFAULT 0,
  created_at ${d.bigint} NOT NULL
);
-- What a recover looks for: an endpoint's failed deliveries, a call at a time. Deliveries are
-- failed only at the end of their schedule, so the index is small and rarely written.
CREATE INDEX deliveries_failed ON deliveries (endpoint_id, call_id) WHERE status = 'failed';
`,
  },
  {
    id: 16,
    name: "lease_expired_repair",
    reads: ["deliveries"],
    sql: (d, columns) => `
-- Migration 14 was changed after a commit had carried it (leased_at and the trigger that reads it
-- were added to it), so a database migrated by that commit has 14 without them, and every claim,
-- which writes leased_at, failed. This adds what is missing and makes the trigger again, the same
-- as 14's; on a database 14 made whole it changes nothing.
${
  d.name === "postgres"
    ? `ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS leased_at ${d.bigint};
DROP TRIGGER IF EXISTS deliveries_lease_expired ON deliveries;
DROP FUNCTION IF EXISTS klen_log_lease_expired();`
    : `${columns.get("deliveries")?.has("leased_at") ? "" : `ALTER TABLE deliveries ADD COLUMN leased_at ${d.bigint};\n`}DROP TRIGGER IF EXISTS deliveries_lease_expired;`
}${leaseExpiredTrigger(d)}`,
  },
  {
    id: 17,
    name: "recover_job_status",
    sql: (d) => `
-- A recover job is kept once done, so GET /v1/recover-jobs/{id} can answer what became of the
-- job_id its 202 gave: \`running\`, \`finished\`, or \`stopped\` (its endpoint was disabled or
-- deleted). \`found\` is the count that 202 gave. Finished jobs go with the retention period.
ALTER TABLE recover_jobs ADD COLUMN status TEXT NOT NULL DEFAULT 'running';
ALTER TABLE recover_jobs ADD COLUMN found INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recover_jobs ADD COLUMN finished_at ${d.bigint};
CREATE INDEX recover_jobs_account ON recover_jobs (account_id, id);
`,
  },
  {
    id: 18,
    name: "delivery_resume_at",
    sql: (d) => `
-- A delivery waiting for its next retry keeps that retry's time here while something done by hand
-- comes first, and goes back to it if that fails, as Stripe's and Svix's manual resends leave the
-- retry schedule alone:
-- - a manual retry of it makes it due now: if that attempt fails, it is due at the kept time
--   again, and its schedule is where it was (\`manual_attempts\` counts such attempts, which
--   \`attempt_count\` includes but the schedule's position leaves out);
-- - a manual retry or a recover of an earlier event of its call parks it behind that one: if the
--   earlier one fails again, it is released at the kept time (or now, if that has passed), not at
--   once, when the endpoint is still failing; if it succeeds, at once, as every parked delivery.
ALTER TABLE deliveries ADD COLUMN resume_at ${d.bigint};
ALTER TABLE deliveries ADD COLUMN manual_attempts INTEGER NOT NULL DEFAULT 0;
`,
  },
  {
    id: 19,
    name: "replay_jobs",
    sql: () => `
-- A replay (POST /v1/endpoints/{id}/replay: the events an endpoint never had a delivery for) too
-- large for its request is a job in recover_jobs of kind \`replay\`, worked through in event id
-- order: \`after_event_id\` is the last event its batches read. Its \`after_call_id\` is set past
-- every call, so that the recover half of the code never reads it as one of its own, and it is
-- \`replaying\` until done, not \`running\`, so that a process from before this migration does not
-- take it up as a recover (finding no failed delivery to re-open, it would end it at once).
ALTER TABLE recover_jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'recover';
ALTER TABLE recover_jobs ADD COLUMN after_event_id TEXT;
-- Each new event, each ordering sweep and each release of a chain's next delivery asks whether a
-- job of its endpoint is running: without this, a scan of every job kept for the retention period.
CREATE INDEX recover_jobs_endpoint ON recover_jobs (endpoint_id, status);
`,
  },
  {
    id: 20,
    name: "blobs_call",
    sql: () => `
-- GET /v1/calls/{id}/media lists a call's blobs: without this, a scan of every blob kept for the
-- retention period.
CREATE INDEX blobs_call ON blobs (call_id);
`,
  },
  {
    id: 21,
    name: "revoked_api_keys",
    sql: (d) => `
-- A key revoked with DELETE /v1/api-keys/{id} is remembered by its hash, so that a process started
-- again with it as KLEN_API_KEY (which adds that key to the default account) does not bring it back.
CREATE TABLE revoked_api_keys (
  key_hash TEXT PRIMARY KEY,
  account_id INTEGER NOT NULL,
  revoked_at ${d.bigint} NOT NULL
);
`,
  },
  {
    id: 22,
    name: "blob_chunks",
    sql: (d) => `
-- KLEN_BLOB_STORE=database: a blob's bytes in the database, in numbered chunks, so that processes
-- on several machines that share the database need no shared folder. blobs.store says where each
-- blob's bytes are (NULL: the local folder, as before this migration).
CREATE TABLE blob_chunks (
  blob_key TEXT NOT NULL,
  n INTEGER NOT NULL,
  data ${d.name === "sqlite" ? "BLOB" : "BYTEA"} NOT NULL,
  created_at ${d.bigint} NOT NULL,
  PRIMARY KEY (blob_key, n)
);
-- The orphan sweep: first chunks by age.
CREATE INDEX blob_chunks_created ON blob_chunks (created_at) WHERE n = 0;
${d.name === "postgres" ? "-- Audio does not compress: stored out of line as it is, without trying.\nALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;\n" : ""}ALTER TABLE blobs ADD COLUMN store TEXT;
`,
  },
];
