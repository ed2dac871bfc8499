import { type Command, Option } from "commander";
import { formatDuration } from "../util/units.js";
import { type ApiClient, apiClient, type DeliveryObject, type Page, pollUntil } from "./api-client.js";
import { type ApiOpts, positiveInt, run, withApiOptions } from "./command-kit.js";
import { timeOfDay } from "./listen.js";
import type { Output } from "./output.js";

/** `POST /v1/endpoints/{id}/recover` and `…/replay`'s answer: `job_id` when it runs in the background. */
interface JobAnswer {
  /** A background replay's is null: it does not count its events in advance. */
  queued: number | null;
  job_id?: string;
}

/** A background recover or replay as `GET /v1/recover-jobs/{id}` shows it. */
export interface RecoverJob {
  id: string;
  kind: "recover" | "replay";
  endpoint_id: string;
  status: "running" | "finished" | "stopped";
  since: string;
  until: string;
  found: number | null;
  queued: number;
  created_at: string;
  finished_at: string | null;
}

const plural = (n: number, one: string, many: string) =>
  `${n.toLocaleString("en-US")} ${n === 1 ? one : many}`;

/**
 * What a recover that found nothing says: recover re-queues failed deliveries only, so deliveries
 * still on their retry schedule (the endpoint still failing, or just fixed) are named, with when
 * the next one is due and how to send one now.
 */
async function nothingFailed(client: ApiClient, endpointId: string): Promise<string> {
  const none = `re-queued 0 failed deliveries of ${endpointId}: none failed in that time`;
  const page = await client.get<Page<DeliveryObject>>(
    `/v1/deliveries?endpoint_id=${encodeURIComponent(endpointId)}&status=pending&limit=100`,
  );
  if (page.data.length === 0) return `${none}, and none is pending`;
  const due = page.data
    .map((d) => d.next_attempt_at)
    .filter((t): t is string => t !== null)
    .sort()[0];
  const count = page.next_cursor ? "more than 100" : page.data.length.toLocaleString("en-US");
  const list = `klen-webhooks deliveries list --endpoint-id ${endpointId} --status pending`;
  // Retries are up to hours apart: the time of day with how far off it is.
  const inMs = due === undefined ? 0 : Math.max(0, Math.round((Date.parse(due) - Date.now()) / 1000) * 1000);
  return `${none}; ${count} ${page.data.length === 1 && !page.next_cursor ? "is" : "are"} still pending on the retry schedule${
    due === undefined
      ? ` (${page.next_cursor ? "the newest 100 wait" : "waiting"} behind earlier events of their calls): list them with ${list}`
      : ` (the next due at ${timeOfDay(new Date(due))}, in ${formatDuration(inMs)}): send one now with klen-webhooks deliveries retry dlv_…, or list them with ${list}`
  }`;
}

/**
 * Polls a background recover until it is `finished` or `stopped` (or `timeoutMs` passes), showing
 * its progress; a server restarting meanwhile is waited out, as `test-call --wait` does.
 */
async function followRecoverJob(
  client: ApiClient,
  out: Output,
  kind: JobCommand,
  jobId: string,
  timeoutMs: number,
): Promise<{ job: RecoverJob; done: boolean }> {
  const { done, value: job } = await pollUntil(out, `endpoints ${kind.name}`, timeoutMs, async () => {
    const job = await client.get<RecoverJob>(`/v1/recover-jobs/${jobId}`);
    const running = job.status === "running";
    if (running) out.progress(`${job.id} running: ${kind.soFar(job)}…`);
    return { done: !running, value: job };
  });
  return { job, done };
}

/** What tells `endpoints recover` and `endpoints replay` apart; the rest they share. */
interface JobCommand {
  name: "recover" | "replay";
  /** What its range is a range of: "deliveries" (recover) or "events" (replay). */
  ranges: string;
  /** What it did to them: "re-queued", "queued". */
  did: string;
  description: string;
  help: string;
  /** N of what it queued: "3 failed deliveries", "3 events". */
  counted(n: number): string;
  /** What it says when it queued nothing. */
  nothing(client: ApiClient, endpointId: string, since: string, until: string | undefined): Promise<string>;
  /** What it says when it went to the background. */
  background(r: JobAnswer, endpointId: string): string;
  /** A running job's progress. */
  soFar(job: RecoverJob): string;
  /** How a stopped job ends. */
  stopped: string;
}

const RECOVER: JobCommand = {
  name: "recover",
  ranges: "deliveries",
  did: "re-queued",
  description:
    "re-queue an endpoint's failed deliveries made in a time range, one more attempt each (POST /v1/endpoints/{id}/recover)",
  help: `
Each call's recovered events still go out in order. A recover of more than the server's
KLEN_RECOVER_BATCH deliveries (default 2000) runs in the background: the command prints its job
id (see it with GET /v1/recover-jobs/{id}); with --wait it follows it, and exits 1 if the job
stopped (the endpoint was disabled or deleted meanwhile) or --timeout passed. To send events the
endpoint never had a delivery for (it was disabled, or made later), use endpoints replay.

Examples:
  $ klen-webhooks endpoints recover ep_01j9z3… --since 2026-11-24T18:00:00Z
  $ klen-webhooks endpoints recover ep_01j9z3… --since 2026-11-24T18:00:00Z --until 2026-11-25T06:00:00Z --wait`,
  counted: (n) => plural(n, "failed delivery", "failed deliveries"),
  nothing: (client, endpointId) => nothingFailed(client, endpointId),
  background: (r, endpointId) =>
    `found ${plural(r.queued ?? 0, "failed delivery", "failed deliveries")} of ${endpointId}: re-queuing them in the background as ${r.job_id}`,
  soFar: (job) =>
    `${job.queued.toLocaleString("en-US")} of ${(job.found ?? 0).toLocaleString("en-US")} re-queued`,
  stopped: "stopped: the endpoint was disabled or deleted; the rest stay failed",
};

const REPLAY: JobCommand = {
  name: "replay",
  ranges: "events",
  did: "queued",
  description:
    "send an endpoint the events of a time range it never had a delivery for: made while it was disabled, before it existed, or outside its filter then (POST /v1/endpoints/{id}/replay)",
  help: `
What the endpoint's filter takes now is replayed, once each; a test call aimed at another endpoint
is not. Each call's replayed events go out in order, before its later events still waiting for
their retry. Events older than the server's KLEN_RETENTION are gone and not replayed. A range of
more than KLEN_RECOVER_BATCH events (default 2000; missing or not) is replayed in the background:
the command prints its job id (see it with GET /v1/recover-jobs/{id}); with --wait it follows it,
and exits 1 if the job stopped (the endpoint was disabled or deleted meanwhile) or --timeout
passed. To try failed deliveries once more, use endpoints recover.

Examples:
  $ klen-webhooks endpoints replay ep_01j9z3… --since 2026-11-24T18:00:00Z
  $ klen-webhooks endpoints replay ep_01j9z3… --since 2026-11-01T00:00:00Z --wait`,
  counted: (n) => plural(n, "event", "events"),
  nothing: async (_client, endpointId, since, until) =>
    `queued nothing: ${endpointId} has a delivery for every event ${until === undefined ? `since ${since}` : `from ${since} to ${until}`} that its filter takes`,
  background: (_r, endpointId) =>
    `replaying the events ${endpointId} never had in the background as ${_r.job_id}`,
  soFar: (job) => `${plural(job.queued, "event", "events")} queued so far`,
  stopped: "stopped: the endpoint was disabled or deleted; the rest are not queued",
};

/** `endpoints recover <id> --since …` and `endpoints replay <id> --since …`. */
export function registerRecoverCommands(endpoints: Command): void {
  for (const kind of [RECOVER, REPLAY]) registerJobCommand(endpoints, kind);
}

function registerJobCommand(endpoints: Command, kind: JobCommand): void {
  withApiOptions(
    endpoints
      .command(kind.name)
      .description(kind.description)
      .argument("<endpoint_id>", "the endpoint (ep_…)")
      .requiredOption(
        "--since <time>",
        `from ${kind.ranges} made at this ISO-8601 time (2026-11-24T18:00:00Z)`,
      )
      .option("--until <time>", `up to ${kind.ranges} made at this ISO-8601 time (default: now)`)
      .option("--wait", `follow a ${kind.name} run in the background until it is done`)
      .addOption(
        new Option(
          "--timeout <seconds>",
          `with --wait: give up waiting after this long (the ${kind.name} goes on)`,
        )
          .argParser(positiveInt("--timeout"))
          .default(600),
      ),
  )
    .addHelpText("after", kind.help)
    .action(
      run<ApiOpts & { since: string; until?: string; wait?: boolean; timeout: number }>(
        async (o, out, cmd) => {
          const endpointId = cmd.processedArgs[0] as string;
          const client = apiClient(o);
          const body: Record<string, string> = { since: o.since };
          if (o.until !== undefined) body.until = o.until;
          const r = await client.post<JobAnswer>(
            `/v1/endpoints/${encodeURIComponent(endpointId)}/${kind.name}`,
            body,
          );
          const see = `see them with: klen-webhooks deliveries list --endpoint-id ${endpointId} --status pending`;
          const queuedLine = (n: number) => `${kind.did} ${kind.counted(n)} of ${endpointId}; ${see}`;
          if (r.job_id === undefined) {
            if (out.json) out.data(r);
            else if ((r.queued ?? 0) > 0) out.line(queuedLine(r.queued ?? 0));
            else out.line(await kind.nothing(client, endpointId, o.since, o.until));
            return 0;
          }
          if (!o.wait) {
            if (out.json) out.data(r);
            else out.line(`${kind.background(r, endpointId)} (follow it with --wait)`);
            return 0;
          }
          out.line(`${kind.background(r, endpointId)}…`);
          const { job, done } = await followRecoverJob(client, out, kind, r.job_id, o.timeout * 1000);
          const result = { ...job, done };
          if (!done) {
            if (out.json) out.data({ ...result, error: `still running after ${o.timeout} s` });
            else
              out.warn(
                `klen-webhooks endpoints ${kind.name}: ${out.yellow(`gave up waiting after ${o.timeout} s: ${r.job_id} is still running on the server`)}`,
              );
            return 1;
          }
          if (out.json) out.data(job.status === "stopped" ? { ...result, error: kind.stopped } : result);
          else if (job.status === "finished")
            out.line(
              `${job.id} finished: ${job.queued > 0 ? queuedLine(job.queued) : await kind.nothing(client, endpointId, o.since, o.until)}`,
            );
          else
            out.warn(
              `klen-webhooks endpoints ${kind.name}: ${out.red(`${job.id} ${kind.stopped}`)} (${kind.soFar(job)})`,
            );
          return job.status === "finished" ? 0 : 1;
        },
      ),
    );
}
