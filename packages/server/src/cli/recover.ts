import { type Command, Option } from "commander";
import { formatDuration } from "../util/units.js";
import { type ApiClient, apiClient, type DeliveryObject, type Page, pollUntil } from "./api-client.js";
import { type ApiOpts, positiveInt, run, withApiOptions } from "./command-kit.js";
import { timeOfDay } from "./listen.js";
import type { Output } from "./output.js";

/** `POST /v1/endpoints/{id}/recover`'s answer: `job_id` when it runs in the background. */
interface Recovery {
  queued: number;
  job_id?: string;
}

/** A background recover as `GET /v1/recover-jobs/{id}` shows it. */
export interface RecoverJob {
  id: string;
  endpoint_id: string;
  status: "running" | "finished" | "stopped";
  since: string;
  until: string;
  found: number;
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
export async function followRecoverJob(
  client: ApiClient,
  out: Output,
  jobId: string,
  timeoutMs: number,
): Promise<{ job: RecoverJob; done: boolean }> {
  const { done, value: job } = await pollUntil(out, "endpoints recover", timeoutMs, async () => {
    const job = await client.get<RecoverJob>(`/v1/recover-jobs/${jobId}`);
    const running = job.status === "running";
    if (running)
      out.progress(
        `${job.id} running: ${job.queued.toLocaleString("en-US")} of ${job.found.toLocaleString("en-US")} re-queued…`,
      );
    return { done: !running, value: job };
  });
  return { job, done };
}

/** `endpoints recover <id> --since …`: after an outage, one more attempt of each failed delivery. */
export function registerRecoverCommand(endpoints: Command): void {
  withApiOptions(
    endpoints
      .command("recover")
      .description(
        "re-queue an endpoint's failed deliveries made in a time range, one more attempt each (POST /v1/endpoints/{id}/recover)",
      )
      .argument("<endpoint_id>", "the endpoint (ep_…)")
      .requiredOption("--since <time>", "from deliveries made at this ISO-8601 time (2026-11-24T18:00:00Z)")
      .option("--until <time>", "up to deliveries made at this ISO-8601 time (default: now)")
      .option("--wait", "follow a recover run in the background until it is done")
      .addOption(
        new Option(
          "--timeout <seconds>",
          "with --wait: give up waiting after this long (the recover goes on)",
        )
          .argParser(positiveInt("--timeout"))
          .default(600),
      ),
  )
    .addHelpText(
      "after",
      `
Each call's recovered events still go out in order. A recover of more than the server's
KLEN_RECOVER_BATCH deliveries (default 2000) runs in the background: the command prints its job
id (see it with GET /v1/recover-jobs/{id}); with --wait it follows it, and exits 1 if the job
stopped (the endpoint was disabled or deleted meanwhile) or --timeout passed.

Examples:
  $ klen-webhooks endpoints recover ep_01j9z3… --since 2026-11-24T18:00:00Z
  $ klen-webhooks endpoints recover ep_01j9z3… --since 2026-11-24T18:00:00Z --until 2026-11-25T06:00:00Z --wait`,
    )
    .action(
      run<ApiOpts & { since: string; until?: string; wait?: boolean; timeout: number }>(
        async (o, out, cmd) => {
          const endpointId = cmd.processedArgs[0] as string;
          const client = apiClient(o);
          const body: Record<string, string> = { since: o.since };
          if (o.until !== undefined) body.until = o.until;
          const r = await client.post<Recovery>(
            `/v1/endpoints/${encodeURIComponent(endpointId)}/recover`,
            body,
          );
          const see = `see them with: klen-webhooks deliveries list --endpoint-id ${endpointId} --status pending`;
          if (r.job_id === undefined) {
            if (out.json) out.data(r);
            else if (r.queued > 0)
              out.line(
                `re-queued ${plural(r.queued, "failed delivery", "failed deliveries")} of ${endpointId}; ${see}`,
              );
            else out.line(await nothingFailed(client, endpointId));
            return 0;
          }
          if (!o.wait) {
            if (out.json) out.data(r);
            else
              out.line(
                `found ${plural(r.queued, "failed delivery", "failed deliveries")} of ${endpointId}: re-queuing them in the background as ${r.job_id} (follow it with --wait)`,
              );
            return 0;
          }
          out.line(
            `found ${plural(r.queued, "failed delivery", "failed deliveries")}: re-queuing them as ${out.bold(r.job_id)}…`,
          );
          const { job, done } = await followRecoverJob(client, out, r.job_id, o.timeout * 1000);
          const result = { ...job, done };
          if (!done) {
            if (out.json) out.data({ ...result, error: `still running after ${o.timeout} s` });
            else
              out.warn(
                `klen-webhooks endpoints recover: ${out.yellow(`gave up waiting after ${o.timeout} s: ${r.job_id} is still running on the server`)}`,
              );
            return 1;
          }
          const stopped = `stopped: the endpoint was disabled or deleted; the rest stay failed`;
          if (out.json) out.data(job.status === "stopped" ? { ...result, error: stopped } : result);
          else if (job.status === "finished")
            out.line(
              `${job.id} finished: re-queued ${plural(job.queued, "failed delivery", "failed deliveries")}; ${see}`,
            );
          else
            out.warn(
              `klen-webhooks endpoints recover: ${out.red(`${job.id} ${stopped}`)} (${job.queued.toLocaleString("en-US")} of ${job.found.toLocaleString("en-US")} re-queued)`,
            );
          return job.status === "finished" ? 0 : 1;
        },
      ),
    );
}
