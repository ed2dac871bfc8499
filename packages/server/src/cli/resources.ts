import { type Command, InvalidArgumentError, Option } from "commander";
import {
  type ApiClient,
  ApiRequestError,
  apiClient,
  attemptDetail,
  type DeliveryObject,
  listAll,
  type Page,
} from "./api-client.js";
import { registerCallCommands } from "./calls.js";
import {
  type ApiOpts,
  goAhead,
  type PageOpts,
  pageQuery,
  positiveInt,
  prefixedId,
  run,
  wholeNumber,
  willAsk,
  withApiOptions,
  withPageOptions,
} from "./command-kit.js";
import { type EndpointFieldOpts, endpointFields, withEndpointFields } from "./endpoint-fields.js";
import { registerEventCommands } from "./events.js";
import { type Output, statusText } from "./output.js";
import { registerRecoverCommands } from "./recover.js";

/** An API key as the API lists it: never the key itself, which is shown once, when it is made. */
interface ApiKeyObject {
  id: number;
  prefix: string;
  created_at: string;
  current?: boolean;
  key?: string | null;
}

/** An endpoint as the API returns it, as far as these commands print it. */
interface EndpointObject {
  id: string;
  url: string;
  description: string;
  event_types: string[];
  agent_ids: number[];
  headers: Record<string, string>;
  disabled: boolean;
  disabled_reason: string | null;
  rate_limit: number | null;
  secret?: string;
}

/** Everything the API can say about a delivery, with each attempt's time and detail. */
interface DeliveryDetail extends DeliveryObject {
  event_type: string | null;
  call_id: number;
  attempt_count: number;
  last_error: string | null;
  attempts: Array<
    DeliveryObject["attempts"][number] & {
      started_at: string;
      error_message: string | null;
      response_body: string | null;
    }
  >;
}

/** `--rate-limit` and `endpoints rate-limit`: what the API takes, checked before asking it. */
const rateLimit = wholeNumber(
  "rate limit",
  1,
  100_000,
  "rate limit must be a whole number from 1 to 100000 a second",
);

const rateLimitOrNone = wholeNumber(
  "rate limit",
  1,
  100_000,
  "rate limit must be a whole number from 1 to 100000 a second, or none",
);

function endpointLine(out: Output, e: EndpointObject): string {
  const state = e.disabled ? out.red(`disabled (${e.disabled_reason ?? "no reason"})`) : out.green("enabled");
  const agents = e.agent_ids?.length ? ` of agents ${e.agent_ids.join(",")}` : "";
  const types = (e.event_types.length === 0 ? "all events" : e.event_types.join(",")) + agents;
  const n = Object.keys(e.headers ?? {}).length;
  const headers = n ? `  ${out.dim(`${n} header${n === 1 ? "" : "s"}`)}` : "";
  const rate = e.rate_limit ? `  ${out.dim(`at most ${e.rate_limit}/s`)}` : "";
  return `${e.id}  ${state}  ${e.url}  ${out.dim(types)}${rate}${headers}${e.description ? `  ${e.description}` : ""}`;
}

/** What a pending delivery waits for, or why a finished one failed. */
function deliveryState(d: DeliveryDetail): string {
  if (d.status === "pending" && d.sending_since)
    return `, being sent since ${d.sending_since} (sent again at ${d.next_attempt_at} if the attempt is lost)`;
  if (d.status === "pending")
    return d.next_attempt_at
      ? `, next attempt ${d.next_attempt_at}`
      : ", waiting for an earlier event of its call to this endpoint";
  return d.status === "failed" && d.last_error ? `, last error ${d.last_error}` : "";
}

/** A delivery and, indented below it, every attempt. */
function printDelivery(out: Output, d: DeliveryDetail): void {
  const status =
    d.status === "succeeded"
      ? out.green(d.status)
      : d.status === "failed"
        ? out.red(d.status)
        : out.yellow(d.status);
  out.line(
    `${d.id}  ${status}  ${d.event_type ?? "event"} ${d.event_id} (call ${d.call_id}) → ${d.endpoint_id}  ${d.attempt_count} attempt${d.attempt_count === 1 ? "" : "s"}${deliveryState(d)}`,
  );
  for (const a of d.attempts) {
    const detail = attemptDetail(a);
    out.line(
      `  #${a.number} ${out.dim(a.started_at)} ${statusText(out, a.status_code, a.error)} ${out.dim(`(${a.duration_ms} ms)`)}${detail ? ` ${detail}` : ""}`,
    );
  }
}

/**
 * A command that takes one id, makes one request and prints one line (`--json`: the answer):
 * `endpoints enable|disable|secret`, `deliveries retry`.
 */
function idCommand<T>(
  parent: Command,
  spec: {
    name: string;
    description: string;
    argument: [string, string];
    /** Help after the options: notes, then `Examples:`. */
    help: string;
    call: (c: ApiClient, id: string) => Promise<T>;
    line: (out: Output, answer: T) => string;
    /**
     * For what cannot be undone: the question asked on a terminal first (`--yes` skips it), made
     * once the target is looked up, so that a wrong id or key fails before anything is asked.
     */
    confirm?: (c: ApiClient, id: string) => Promise<string>;
    /** Refuses an argument of the wrong form before any request (a usage error). */
    check?: (id: string) => unknown;
  },
): void {
  const command = withApiOptions(
    parent
      .command(spec.name)
      .description(spec.description)
      .argument(...spec.argument),
  );
  if (spec.confirm) command.option("--yes", "do not ask first on a terminal");
  command.addHelpText("after", `\n${spec.help}`).action(
    run<ApiOpts & { yes?: boolean }>(async (o, out, cmd) => {
      const raw = cmd.processedArgs[0] as string;
      spec.check?.(raw);
      const client = apiClient(o);
      // The target is looked up for the question only: a script is not asked, nor made to wait.
      if (spec.confirm && willAsk(o) && !(await goAhead(out, await spec.confirm(client, raw), o))) return 1;
      const answer = await spec.call(client, encodeURIComponent(raw));
      if (out.json) out.data(answer);
      else out.line(spec.line(out, answer));
      return 0;
    }),
  );
}

/** `endpoints enable|disable <id>`: PATCH the endpoint, print its line. */
function toggle(endpoints: Command, name: "enable" | "disable"): void {
  idCommand(endpoints, {
    name,
    description:
      name === "enable"
        ? "enable an endpoint again; it gets new events from now on (PATCH /v1/endpoints/{id})"
        : "stop sending to an endpoint; its pending deliveries are settled failed as they come due (PATCH /v1/endpoints/{id})",
    argument: ["<endpoint_id>", "the endpoint (ep_…)"],
    help: `Examples:\n  $ klen-webhooks endpoints ${name} ep_01j9z3…`,
    call: (c, id) => c.patch<EndpointObject>(`/v1/endpoints/${id}`, { disabled: name === "disable" }),
    line: endpointLine,
  });
}

/** `endpoints update` and `endpoints rotate-secret`: what the dashboard's endpoint page edits. */
function registerEndpointEdits(endpoints: Command): void {
  withApiOptions(
    withEndpointFields(
      endpoints
        .command("update")
        .description("change an endpoint's URL, description, filters or headers (PATCH /v1/endpoints/{id})")
        .argument("<endpoint_id>", "the endpoint (ep_…)")
        .option("--url <url>", "where to send the events from now on"),
      true,
    ).option("--clear-headers", "send no custom headers any more"),
  )
    .addHelpText(
      "after",
      `
Only what is given changes. Attempts already claimed go out as the endpoint is when they start.

Examples:
  $ klen-webhooks endpoints update ep_01j9z3… --url https://example.com/v2/webhooks
  $ klen-webhooks endpoints update ep_01j9z3… --event-types call.ended,call.failed --agent-ids all
  $ klen-webhooks endpoints update ep_01j9z3… --header "authorization: Bearer abc" --header "x-team: voice"`,
    )
    .action(
      run<ApiOpts & EndpointFieldOpts & { url?: string; clearHeaders?: boolean }>(async (o, out, cmd) => {
        const body = endpointFields(o);
        if (o.url !== undefined) body.url = o.url;
        if (o.clearHeaders) {
          if (o.header) throw new InvalidArgumentError("--clear-headers and --header: give one of them");
          body.headers = {};
        }
        if (Object.keys(body).length === 0)
          throw new InvalidArgumentError(
            "nothing to change: give --url, --description, --event-types, --agent-ids, --header or --clear-headers",
          );
        const id = encodeURIComponent(cmd.processedArgs[0] as string);
        const e = await apiClient(o).patch<EndpointObject>(`/v1/endpoints/${id}`, body);
        if (out.json) out.data(e);
        else out.line(endpointLine(out, e));
        return 0;
      }),
    );
  withApiOptions(
    endpoints
      .command("rotate-secret")
      .description(
        "give an endpoint a new signing secret; the old one signs too for a grace period (POST /v1/endpoints/{id}/rotate-secret)",
      )
      .argument("<endpoint_id>", "the endpoint (ep_…)")
      .addOption(
        new Option(
          "--grace <seconds>",
          "how long the old secret keeps signing too (0: stop at once, a leaked secret)",
        )
          .argParser(
            wholeNumber("--grace", 0, 2_592_000, "--grace must be whole seconds from 0 to 2592000 (30 days)"),
          )
          .default(86_400),
      )
      .option("--yes", "with --grace 0, do not ask first on a terminal"),
  )
    .addHelpText(
      "after",
      `
During the grace period every attempt carries a signature with each secret, so receivers can
switch at their own pace.

Examples:
  $ klen-webhooks endpoints rotate-secret ep_01j9z3…
  $ klen-webhooks endpoints rotate-secret ep_01j9z3… --grace 0`,
    )
    .action(
      run<ApiOpts & { grace: number; yes?: boolean }>(async (o, out, cmd) => {
        const raw = cmd.processedArgs[0] as string;
        const client = apiClient(o);
        // Without a grace period every receiver still on the old secret fails from now on.
        if (
          o.grace === 0 &&
          !(await goAhead(out, `Stop the old secrets of ${raw} now, before receivers have the new one?`, o))
        )
          return 1;
        const r = await client.post<{ secret: string; previous_secret_expires_at: string | null }>(
          `/v1/endpoints/${encodeURIComponent(raw)}/rotate-secret`,
          { grace_seconds: o.grace },
        );
        if (out.json) out.data(r);
        else {
          out.line(`new signing secret: ${out.bold(r.secret)}`);
          out.line(
            r.previous_secret_expires_at
              ? `rotated-out secrets sign too, the last of them until ${r.previous_secret_expires_at}`
              : "no other secret signs any more",
          );
        }
        return 0;
      }),
    );
}

/**
 * `endpoints`, `deliveries`, `api-keys`, `events` and `calls`, from a terminal: create, list,
 * enable, disable and delete endpoints and show a secret; see every delivery's attempts and retry
 * one; roll an API key; list events and show one's body; get a call's recording and stored texts.
 */
export function registerResourceCommands(program: Command): void {
  registerEndpointCommands(program);
  registerDeliveryCommands(program);
  registerApiKeyCommands(program);
  registerEventCommands(program);
  registerCallCommands(program);
}

function registerEndpointCommands(program: Command): void {
  const endpoints = program
    .command("endpoints")
    .description(
      "list, create, update, enable, disable and delete webhook endpoints; show or rotate a secret; recover failed deliveries; replay events they never had; set a rate limit",
    )
    .addHelpText(
      "after",
      `
Examples:
  $ klen-webhooks endpoints create --url https://example.com/webhooks
  $ klen-webhooks endpoints list`,
    );
  withApiOptions(endpoints.command("list").description("list the account's endpoints (GET /v1/endpoints)"))
    .addHelpText(
      "after",
      `
Examples:
  $ klen-webhooks endpoints list
  $ klen-webhooks endpoints list --json`,
    )
    .action(
      run<ApiOpts>(async (o, out) => {
        const all = await listAll<EndpointObject>(apiClient(o), "/v1/endpoints");
        if (out.json) out.data(all);
        else if (all.length === 0) out.line("no endpoints yet: klen-webhooks endpoints create --url …");
        else for (const e of all) out.line(endpointLine(out, e));
        return 0;
      }),
    );
  withApiOptions(
    withEndpointFields(
      endpoints
        .command("create")
        .description("create an endpoint and print its signing secret (POST /v1/endpoints)")
        .requiredOption("--url <url>", "where to send the events (https://, or http:// in dev mode)"),
      false,
    ).option(
      "--rate-limit <n>",
      "attempts per second at most, across every worker (default: no limit)",
      rateLimit,
    ),
  )
    .addHelpText(
      "after",
      `
Examples:
  $ klen-webhooks endpoints create --url https://example.com/webhooks
  $ klen-webhooks endpoints create --url http://localhost:3000/webhooks --event-types call.ended,call.failed --json
  $ klen-webhooks endpoints create --url https://example.com/webhooks --rate-limit 20
  $ klen-webhooks endpoints create --url https://example.com/webhooks --agent-ids 1,2 --header "x-team: voice"`,
    )
    .action(
      run<ApiOpts & EndpointFieldOpts & { url: string; rateLimit?: number }>(async (o, out) => {
        const body: Record<string, unknown> = { url: o.url, ...endpointFields(o) };
        if (o.rateLimit !== undefined) body.rate_limit = o.rateLimit;
        const e = await apiClient(o).post<EndpointObject>("/v1/endpoints", body);
        if (out.json) out.data(e);
        else {
          out.line(endpointLine(out, e));
          out.line(`signing secret: ${out.bold(e.secret ?? "")}  (verify with new Webhook(secret))`);
        }
        return 0;
      }),
    );

  registerEndpointEdits(endpoints);
  toggle(endpoints, "enable");
  toggle(endpoints, "disable");
  withApiOptions(
    endpoints
      .command("rate-limit")
      .description("set or remove an endpoint's rate limit (PATCH /v1/endpoints/{id})")
      .argument("<endpoint_id>", "the endpoint (ep_…)")
      .argument("<per_second>", "attempts per second at most, across every worker, or none", (v) =>
        v === "none" ? null : rateLimitOrNone(v),
      ),
  )
    .addHelpText(
      "after",
      `
Deliveries over the limit wait their turn (a call's events still in order); retries count
against it too.

Examples:
  $ klen-webhooks endpoints rate-limit ep_01j9z3… 20
  $ klen-webhooks endpoints rate-limit ep_01j9z3… none`,
    )
    .action(
      run<ApiOpts>(async (o, out, cmd) => {
        const [id, perSecond] = cmd.processedArgs as [string, number | null];
        const e = await apiClient(o).patch<EndpointObject>(`/v1/endpoints/${encodeURIComponent(id)}`, {
          rate_limit: perSecond,
        });
        if (out.json) out.data(e);
        else out.line(endpointLine(out, e));
        return 0;
      }),
    );
  registerRecoverCommands(endpoints);
  idCommand(endpoints, {
    name: "secret",
    description: "print an endpoint's current signing secret (GET /v1/endpoints/{id}/secret)",
    argument: ["<endpoint_id>", "the endpoint (ep_…)"],
    help: "Examples:\n  $ klen-webhooks endpoints secret ep_01j9z3…",
    call: (c, id) => c.get<{ secret: string }>(`/v1/endpoints/${id}/secret`),
    line: (_out, r) => r.secret,
  });
  idCommand(endpoints, {
    name: "delete",
    description: "delete an endpoint: it gets no new deliveries (DELETE /v1/endpoints/{id})",
    argument: ["<endpoint_id>", "the endpoint (ep_…)"],
    help: `Its pending deliveries are settled failed as they come due; its deliveries and their attempts
stay listed. A deleted endpoint cannot be enabled again: to pause one, disable it.

Examples:
  $ klen-webhooks endpoints delete ep_01j9z3…`,
    call: (c, id) => c.delete<EndpointObject>(`/v1/endpoints/${id}`),
    confirm: async (c, id) => {
      const e = await c.get<EndpointObject>(`/v1/endpoints/${encodeURIComponent(id)}`);
      return `Delete endpoint ${e.id} (${e.url})? It cannot be enabled again.`;
    },
    line: (_out, e) => `deleted ${e.id}  ${e.url}${e.description ? `  ${e.description}` : ""}`,
  });
}

function registerDeliveryCommands(program: Command): void {
  const deliveries = program
    .command("deliveries")
    .description("inspect deliveries with every attempt, and retry one")
    .addHelpText(
      "after",
      `
Examples:
  $ klen-webhooks deliveries list --status failed
  $ klen-webhooks deliveries retry dlv_01j9z3…`,
    );
  withApiOptions(
    withPageOptions(
      deliveries
        .command("list")
        .description("recent deliveries, newest first, each with its attempts (GET /v1/deliveries)")
        .addOption(
          new Option("--status <status>", "only this status").choices(["pending", "succeeded", "failed"]),
        )
        .option("--endpoint-id <id>", "only this endpoint's (ep_…)", prefixedId("--endpoint-id", "ep"))
        .option("--event-id <id>", "only this event's (evt_…)", prefixedId("--event-id", "evt"))
        .option("--call-id <id>", "only this call's", positiveInt("--call-id")),
      "those",
    ),
  )
    .addHelpText(
      "after",
      `
Examples:
  $ klen-webhooks deliveries list --status failed
  $ klen-webhooks deliveries list --call-id 42
  $ klen-webhooks deliveries list --status failed --before 2026-11-24T00:00:00Z
  $ klen-webhooks deliveries list --endpoint-id ep_01j9z3… --limit 100 --json`,
    )
    .action(
      run<
        ApiOpts &
          PageOpts & {
            status?: string;
            endpointId?: string;
            eventId?: string;
            callId?: number;
          }
      >(async (o, out) => {
        const q = pageQuery(o, {
          status: o.status,
          endpoint_id: o.endpointId,
          event_id: o.eventId,
          call_id: o.callId,
        });
        const page = await apiClient(o).get<Page<DeliveryDetail>>(`/v1/deliveries?${q}`);
        if (out.json) out.data(page);
        else if (page.data.length === 0) out.line("no deliveries");
        else {
          for (const d of page.data) printDelivery(out, d);
          if (page.next_cursor) out.line(out.dim(`more: --cursor ${page.next_cursor}`));
        }
        return 0;
      }),
    );
  idCommand(deliveries, {
    name: "retry",
    description: "make one more attempt of a delivery now (POST /v1/deliveries/{id}/retry)",
    argument: ["<delivery_id>", "the delivery (dlv_…)"],
    help: `A delivery waiting behind an earlier event of its call, one with an attempt in flight, or one whose
endpoint is disabled or deleted is refused (exit status 1, with the reason).

Examples:
  $ klen-webhooks deliveries retry dlv_01j9z3…`,
    call: (c, id) => c.post<DeliveryDetail>(`/v1/deliveries/${id}/retry`),
    line: (_out, d) =>
      `${d.id} queued for one more attempt (${d.status}); see it with: klen-webhooks deliveries list --event-id ${d.event_id}`,
  });
}

const apiKeyLine = (out: Output, k: ApiKeyObject) =>
  `${k.id}  ${k.prefix}…  ${out.dim(`created ${k.created_at}`)}${k.current ? `  ${out.green("(this key)")}` : ""}`;

/** `api-keys list|create|revoke`: roll the account's key without a moment with none. */
function registerApiKeyCommands(program: Command): void {
  const keys = program
    .command("api-keys")
    .description("list, create and revoke the account's API keys (to roll a key: create, switch, revoke)")
    .addHelpText(
      "after",
      `
Examples:
  $ klen-webhooks api-keys create
  $ klen-webhooks api-keys list
  $ klen-webhooks api-keys revoke 1`,
    );
  withApiOptions(
    keys
      .command("list")
      .description("the account's keys, newest first: id and prefix only (GET /v1/api-keys)"),
  )
    .addHelpText(
      "after",
      "\nThe key this command used is marked (this key).\n\nExamples:\n  $ klen-webhooks api-keys list --json",
    )
    .action(
      run<ApiOpts>(async (o, out) => {
        const all = await listAll<ApiKeyObject>(apiClient(o), "/v1/api-keys");
        if (out.json) out.data(all);
        else for (const k of all) out.line(apiKeyLine(out, k));
        return 0;
      }),
    );
  withApiOptions(
    keys.command("create").description("make a new key and print it, this once (POST /v1/api-keys)"),
  )
    .addHelpText(
      "after",
      "\nThe key is stored only hashed: copy it now.\n\nExamples:\n  $ klen-webhooks api-keys create --json",
    )
    .action(
      run<ApiOpts>(async (o, out) => {
        const made = await apiClient(o).post<ApiKeyObject>("/v1/api-keys");
        if (out.json) out.data(made);
        else {
          out.line(apiKeyLine(out, made));
          out.line(`API key (shown once, store it now): ${out.bold(made.key ?? "")}`);
        }
        return 0;
      }),
    );
  idCommand(keys, {
    name: "revoke",
    description: "revoke a key at once (DELETE /v1/api-keys/{id}); the account's only key cannot be",
    argument: ["<key_id>", "the key's id, from api-keys list"],
    help: `Other server processes stop accepting it within 5 seconds.

Examples:
  $ klen-webhooks api-keys revoke 1`,
    call: (c, id) => c.delete<{ id: number; prefix: string }>(`/v1/api-keys/${id}`),
    check: positiveInt("key_id"),
    confirm: async (c, id) => {
      // A positive integer: `check` ran first.
      const key = (await listAll<ApiKeyObject>(c, "/v1/api-keys")).find((k) => k.id === Number(id));
      if (!key) throw new ApiRequestError(404, "not_found", `api key ${id} not found`);
      const mine = key.current ? ", the key this command uses" : "";
      return `Revoke API key ${key.id} (${key.prefix}…${mine})? It stops working for good.`;
    },
    line: (_out, k) => `revoked key ${k.id} (${k.prefix}…)`,
  });
}
