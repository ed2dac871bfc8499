import type { Generated } from "kysely";

/**
 * Table types for Kysely. Times are integer milliseconds since the epoch in both dialects
 * (BIGINT in PostgreSQL, parsed back to numbers); booleans are 0/1 integers so that one query
 * serves both dialects.
 */
export interface Database {
  accounts: { id: Generated<number>; name: string; auto_summary: number; created_at: number };
  api_keys: {
    id: Generated<number>;
    account_id: number;
    key_hash: string;
    prefix: string;
    created_at: number;
  };
  revoked_api_keys: { key_hash: string; account_id: number; revoked_at: number };
  agents: {
    id: Generated<number>;
    account_id: number;
    name: string;
    assistant_id: string | null;
    created_at: number;
    deleted_at: number | null;
  };
  contacts: {
    id: Generated<number>;
    account_id: number;
    name: string;
    email: string | null;
    phone_number: string | null;
    created_at: number;
    deleted_at: number | null;
  };
  calls: {
    id: Generated<number>;
    account_id: number;
    agent_id: number;
    type: string;
    phone_number: string;
    contact_id: number | null;
    klen_call_id: string | null;
    status: string;
    assistant_id: string | null;
    started_at: number | null;
    ended_at: number | null;
    failure_reason: string | null;
    ended_reason: string | null;
    brief_summary: string | null;
    transcript_at: number | null;
    summary_at: number | null;
    recording_at: number | null;
    /** Test calls aimed at one endpoint deliver only there. */
    only_endpoint_id: string | null;
    created_at: number;
    updated_at: number;
  };
  events: {
    seq: Generated<number>;
    id: string;
    account_id: number;
    call_id: number;
    event_type: string;
    payload: string;
    created_at: number;
  };
  endpoints: {
    id: string;
    account_id: number;
    url: string;
    description: string;
    event_types: string;
    agent_ids: string;
    headers: string;
    secret: string;
    previous_secret: string | null;
    previous_secret_expires_at: number | null;
    /** JSON list of rotated-out secrets still signing (endpoints/secrets.ts). */
    previous_secrets: string | null;
    disabled: number;
    disabled_reason: string | null;
    failing_since: number | null;
    /** Attempts per second at most, across processes; null: no limit (migration 12). */
    rate_limit: Generated<number | null>;
    /** When the next attempt may start, in microseconds since the epoch (delivery/rate.ts). */
    rate_next_us: Generated<number | null>;
    created_at: number;
    updated_at: number;
    deleted_at: number | null;
  };
  deliveries: {
    id: string;
    account_id: number;
    event_id: string;
    event_seq: number;
    endpoint_id: string;
    call_id: number;
    status: string;
    attempt_count: number;
    next_attempt_at: number | null;
    claim_token: number;
    /** End of the lease while an attempt is in flight; null otherwise. */
    leased_until: Generated<number | null>;
    /** When the last claim took its lease (migration 14: the start of a `lease_expired` attempt). */
    leased_at: Generated<number | null>;
    /** 1: re-opened by a manual retry or a recover, so one failed attempt fails it (migration 10). */
    one_attempt: Generated<number>;
    /**
     * The time of its next retry, kept while a manual retry of it or of an earlier event of its
     * call comes first: it goes back to it if that fails (migration 18).
     */
    resume_at: Generated<number | null>;
    /** Manual attempts made while it waited for a retry: in attempt_count, not in the schedule's position. */
    manual_attempts: Generated<number>;
    last_error: string | null;
    created_at: number;
    updated_at: number;
  };
  attempts: {
    id: Generated<number>;
    delivery_id: string;
    number: number;
    started_at: number;
    url: string;
    request_headers: string;
    status_code: number | null;
    response_body: string | null;
    duration_ms: number;
    error: string | null;
  };
  idempotency_keys: {
    account_id: number;
    key: string;
    method: string;
    path: string;
    request_hash: string;
    status_code: number;
    response_body: string;
    created_at: number;
  };
  blobs: {
    id: string;
    account_id: number;
    call_id: number | null;
    kind: string;
    content_type: string;
    size: number;
    path: string;
    /** 1: the bytes are encrypted at rest; 0: in clear; null: written before migration 9. */
    sealed: number | null;
    /** Where the bytes are: `database` (blob_chunks), or the local folder (`local`, or null: before migration 22). */
    store: string | null;
    created_at: number;
  };
  blob_chunks: { blob_key: string; n: number; data: Buffer; created_at: number };
  settings: { name: string; value: string; created_at: number };
  test_call_runs: {
    call_id: number;
    account_id: number;
    agent_name: string;
    outcome: string;
    transcript_bytes: number | null;
    /** Failures of the run (MAX_RUN_ATTEMPTS). */
    attempts: number;
    /** Times it was carried on after its process died (MAX_RUN_TAKEOVERS); migration 11. */
    takeovers: number;
    leased_until: number;
    created_at: number;
  };
  recover_jobs: {
    id: string;
    account_id: number;
    endpoint_id: string;
    /** The recover's range of deliveries' `created_at`. */
    since: number;
    until: number;
    /** The batches done so far re-opened the failed deliveries of every call up to this id. */
    after_call_id: number;
    /** Deliveries re-opened so far. */
    queued: number;
    leased_until: number | null;
    claim_token: number;
    created_at: number;
    /** `running`, `finished`, or `stopped` (its endpoint was disabled or deleted): migration 17. */
    status: string;
    /** Failed deliveries found when the recover was asked (its 202's `queued`); 0 for a replay. */
    found: number;
    finished_at: number | null;
    /** `recover` (failed deliveries) or `replay` (events never delivered): migration 19. */
    kind: string;
    /** A replay's batches made the deliveries of every call of the events up to this id. */
    after_event_id: string | null;
  };
  summary_jobs: {
    call_id: number;
    account_id: number;
    transcript: string;
    status: string;
    attempts: number;
    next_attempt_at: number;
    last_error: string | null;
    created_at: number;
    updated_at: number;
  };
}
