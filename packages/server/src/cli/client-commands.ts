import { EVENT_TYPES, FAILURE_REASONS } from "@klen/webhooks/schemas";
import { type Command, InvalidArgumentError, Option } from "commander";
import { apiClient } from "./api-client.js";
import { type ApiOpts, positiveInt, run, withApiOptions } from "./command-kit.js";
import { checkSecret, listen, newLocalSecret, parseEventList } from "./listen.js";
import { registerResourceCommands } from "./resources.js";
import { followCall, followExitCode, startTestCall, type TestCallRequest } from "./test-call.js";
import { checkEventType, checkFailureReason, trigger } from "./trigger.js";

/**
 * Commands that talk to a running server over its API (`endpoints`, `deliveries` and `api-keys`
 * from resources.ts; `test-call`, `trigger`, `listen`).
 * Registered here so main.ts stays the map of the CLI.
 */
export function registerClientCommands(program: Command): void {
  addServerExamples(program);
  registerResourceCommands(program);
  withApiOptions(
    program
      .command("test-call")
      .description("start a simulated call on the server (POST /v1/test-calls) and optionally follow it")
      .option(
        "--agent-id <id>",
        'agent to place the call with (default: the account\'s "Test Agent", created once)',
        positiveInt("--agent-id"),
      )
      .addOption(
        new Option("--outcome <outcome>", "how the call ends").choices(["completed", ...FAILURE_REASONS]),
      )
      .option("--endpoint-id <id>", "deliver only to this endpoint (ep_…), else to every matching one")
      .option(
        "--transcript-bytes <n>",
        "make the generated transcript at least this long",
        positiveInt("--transcript-bytes"),
      )
      .option("--wait", "follow the call's events and deliveries until the workflow is done")
      .addOption(
        new Option("--timeout <seconds>", "with --wait: give up after this long")
          .argParser(positiveInt("--timeout"))
          .default(60),
      ),
  )
    .addHelpText(
      "after",
      `
With --wait the exit status is 0 when every delivery succeeded, 1 otherwise (or on timeout, or
when no endpoint got the call's events).

Examples:
  $ klen-webhooks test-call --wait
  $ klen-webhooks test-call --outcome no-answer --endpoint-id ep_01j9z3… --wait
  $ klen-webhooks test-call --transcript-bytes 100000 --json`,
    )
    .action(
      run<
        ApiOpts & {
          agentId?: number;
          outcome?: string;
          endpointId?: string;
          transcriptBytes?: number;
          wait?: boolean;
          timeout: number;
        }
      >(async (o, out) => {
        const client = apiClient(o);
        const body: TestCallRequest = {};
        if (o.agentId !== undefined) body.agent_id = o.agentId;
        if (o.outcome !== undefined) body.outcome = o.outcome;
        if (o.endpointId !== undefined) body.endpoint_id = o.endpointId;
        if (o.transcriptBytes !== undefined) body.transcript_bytes = o.transcriptBytes;
        const callId = await startTestCall(client, body);
        if (!o.wait) {
          if (out.json) out.data({ call_id: callId });
          else
            out.line(
              `test call ${callId} started; see its deliveries with: klen-webhooks deliveries list --call-id ${callId} (or in the dashboard)`,
            );
          return 0;
        }
        out.line(`test call ${out.bold(String(callId))} started; following its events…`);
        const r = await followCall(client, out, callId, o.timeout * 1000);
        const noEndpoint = r.done && r.events.every((e) => e.deliveries.length === 0);
        const NO_ENDPOINT = "no endpoint got these events";
        // The exit status says it failed; the document says why, as the text does.
        if (out.json) out.data(noEndpoint ? { ...r, error: NO_ENDPOINT } : r);
        else if (!r.done)
          out.warn(
            `klen-webhooks test-call: ${out.yellow(`gave up after ${o.timeout} s: the call is ${r.status}, deliveries still pending`)}`,
          );
        else {
          const deliveries = r.events.flatMap((e) => e.deliveries);
          const failed = deliveries.filter((d) => d.status !== "succeeded").length;
          const events = `${r.events.length} event${r.events.length === 1 ? "" : "s"}`;
          out.line(
            `call ${callId} ${r.status}: ${events}${failed ? `, ${out.red(`${failed} ${failed === 1 ? "delivery" : "deliveries"} failed`)}` : ""}`,
          );
          if (noEndpoint)
            out.warn(
              `klen-webhooks test-call: ${out.red(NO_ENDPOINT)}: none is enabled with filters that match a test call (klen-webhooks endpoints list; endpoints create --url …)`,
            );
        }
        return followExitCode(r);
      }),
    );

  withApiOptions(
    program
      .command("trigger")
      .description("make the server emit an event of one type, by driving a new call through the API")
      .argument("<event_type>", `one of ${EVENT_TYPES.join(", ")}`, checkEventType)
      .option(
        "--agent-id <id>",
        `agent to use (default: an agent named "klen-webhooks trigger", created once)`,
        positiveInt("--agent-id"),
      )
      .addOption(
        new Option("--reason <failure_reason>", "failure reason for call.failed")
          .argParser(checkFailureReason)
          .default("no-answer"),
      )
      .option("--phone-number <e164>", "the call's phone number", "+15551234567"),
  )
    .addHelpText(
      "after",
      `
Transitions per event type (each emits its own event, so earlier ones are emitted too):
  call.started     create → start
  call.ended       create → start → end
  call.failed      create → fail (--reason)
  call.transcript  create → start → end → transcript
  call.summary     create → start → end → transcript → summary
  call.recording   create → start → end → transcript → summary → recording (a short WAV)

Examples:
  $ klen-webhooks trigger call.ended
  $ klen-webhooks trigger call.failed --reason busy
  $ klen-webhooks trigger call.recording --json`,
    )
    .action(
      run<ApiOpts & { agentId?: number; reason: string; phoneNumber: string }>(async (o, out, cmd) => {
        const type = cmd.processedArgs[0] as ReturnType<typeof checkEventType>;
        if (type !== "call.failed" && cmd.getOptionValueSource("reason") === "cli")
          throw new InvalidArgumentError(
            `--reason applies to call.failed only (a ${type} call does not fail)`,
          );
        const client = apiClient(o);
        const r = await trigger(client, {
          type,
          reason: o.reason,
          phoneNumber: o.phoneNumber,
          ...(o.agentId !== undefined ? { agentId: o.agentId } : {}),
          progress: (s) => out.progress(s),
        });
        if (out.json) out.data(r);
        else {
          out.line(`call ${r.call_id} (agent ${r.agent_id}) emitted:`);
          for (const e of r.events)
            out.line(`  ${(e.event_type === type ? out.bold : out.dim)(e.event_type.padEnd(15))} ${e.id}`);
        }
        return 0;
      }),
    );

  withApiOptions(
    program
      .command("listen")
      .description("stream the account's events from the server and forward them, signed, to a local URL")
      .requiredOption("--forward-to <url>", "local URL to POST each event to")
      .option(
        "--events <types>",
        `comma-separated event types to forward (default: all; ${EVENT_TYPES.join(",")})`,
      )
      .addOption(
        new Option(
          "--secret <whsec>",
          "signing secret to use, not shown on the terminal (default: a new whsec_ secret, printed at start); the environment keeps it out of ps",
        ).env("KLEN_WEBHOOK_SECRET"),
      )
      .option(
        "--after <event_id>",
        "forward the events after this one first (say, the last one a previous listen forwarded), then new ones",
        (v: string) => {
          if (!/^evt_[0-9a-z]{26}$/.test(v))
            throw new InvalidArgumentError("--after must be an event id (evt_…)");
          return v;
        },
      ),
  )
    .addHelpText(
      "after",
      `
Each event is POSTed with the body exactly as the server stored it and Standard Webhooks headers
(webhook-id, webhook-timestamp, webhook-signature) signed with the local secret, so your handler
verifies it with the SDK or any Standard Webhooks library. The listener reconnects on its own when
the server restarts and resumes after the last event it saw; a local URL that is down is reported
and skipped. --json prints one JSON line per forwarded event.

Examples:
  $ klen-webhooks listen --forward-to http://localhost:3000/webhooks
  $ klen-webhooks listen --forward-to http://localhost:3000/webhooks --events call.ended,call.failed
  $ klen-webhooks listen --forward-to http://localhost:3000/webhooks --after evt_01m8cffq3xn32x6yh7r8rnhz3r
  $ KLEN_WEBHOOK_SECRET="$(klen-webhooks endpoints secret ep_01j9z3…)" klen-webhooks listen --forward-to http://localhost:3000/webhooks
  $ KLEN_API_URL=https://webhooks.example.com klen-webhooks listen --forward-to http://127.0.0.1:4000/hook --json`,
    )
    .action(
      run<ApiOpts & { forwardTo: string; events?: string; secret?: string; after?: string }>(
        async (o, out, cmd) => {
          let target: URL;
          try {
            target = new URL(o.forwardTo);
          } catch {
            throw new InvalidArgumentError(
              `--forward-to "${o.forwardTo}" is not a URL (e.g. http://localhost:3000/webhooks)`,
            );
          }
          if (target.protocol !== "http:" && target.protocol !== "https:")
            throw new InvalidArgumentError("--forward-to must be an http:// or https:// URL");
          if (target.username || target.password)
            throw new InvalidArgumentError(
              "--forward-to must not hold a user name or password (fetch refuses such a URL)",
            );
          const events = parseEventList(o.events);
          // A secret given (often an endpoint's real one, through the environment to keep it out of
          // ps) is not printed back; only a new one is, since the handler must be configured with it.
          const source = cmd.getOptionValueSource("secret");
          const secretFrom = !o.secret ? undefined : source === "env" ? "KLEN_WEBHOOK_SECRET" : "--secret";
          const secret = o.secret ? checkSecret(o.secret, secretFrom) : newLocalSecret();
          const client = apiClient(o);
          const stop = new AbortController();
          const onSignal = () => stop.abort();
          process.once("SIGINT", onSignal);
          process.once("SIGTERM", onSignal);
          try {
            await listen({
              client,
              forwardTo: target.toString(),
              events,
              secret,
              secretFrom,
              after: o.after,
              out,
              signal: stop.signal,
            });
          } finally {
            process.off("SIGINT", onSignal);
            process.off("SIGTERM", onSignal);
          }
          // Pooled keep-alive sockets would hold the process open for a few more seconds.
          process.exit(0);
        },
      ),
    );
}

/** Examples for the commands main.ts defines, so that every `--help` ends with some. */
function addServerExamples(program: Command): void {
  const find = (...path: string[]) =>
    path.reduce<Command | undefined>((c, name) => c?.commands.find((x) => x.name() === name), program);
  program.addHelpText(
    "after",
    `
Server commands read KLEN_* environment variables (see the README); client commands (endpoints,
deliveries, api-keys, events, calls, test-call, trigger, listen) take --api-url / KLEN_API_URL and
--api-key / KLEN_API_KEY.

Examples:
  $ klen-webhooks serve --dev
  $ KLEN_API_KEY=... klen-webhooks trigger call.ended
  $ klen-webhooks listen --forward-to http://localhost:3000/webhooks
  $ klen-webhooks <command> --help`,
  );
  find("serve")?.addHelpText(
    "after",
    `
Where it listens and what it stores (all variables: the README's Configuration table):
  PORT, KLEN_HOST      listen address (default 8080 on 127.0.0.1)
  KLEN_WORKER_PORT     --role worker: /healthz and /metrics on this port (default: no port)
  KLEN_DATA_DIR        SQLite file and blobs (default ./data)
  KLEN_BLOB_STORE      local (blobs as files in KLEN_DATA_DIR, default) or database
  KLEN_DATABASE_URL    sqlite:<path> or postgres://… (default sqlite:$KLEN_DATA_DIR/klen.db)
  KLEN_API_KEY         an API key for the default account (created if there is none)
  KLEN_PUBLIC_URL      where clients reach the API (the base of recording and text URLs)

Several processes on one PostgreSQL need the same shared settings (docs/scaling.md), and the
same blobs: KLEN_BLOB_STORE=database, or one KLEN_DATA_DIR shared by all.

Examples:
  $ klen-webhooks serve --dev                      # SQLite in ./data, http://127.0.0.1:8080
  $ PORT=9000 KLEN_HOST=0.0.0.0 klen-webhooks serve
  $ export KLEN_DATABASE_URL=postgres://... KLEN_PUBLIC_URL=https://hooks.example.com KLEN_BLOB_STORE=database
  $ klen-webhooks serve --role api
  $ KLEN_WORKER_PORT=9090 klen-webhooks serve --role worker`,
  );
  find("migrate")?.addHelpText(
    "after",
    `
Examples:
  $ klen-webhooks migrate
  $ KLEN_DATABASE_URL=postgres://user@db/klen klen-webhooks migrate`,
  );
  find("accounts")?.addHelpText(
    "after",
    `
Examples:
  $ klen-webhooks accounts create --name "Acme Voice"`,
  );
  find("accounts", "create")?.addHelpText(
    "after",
    `
Examples:
  $ klen-webhooks accounts create --name "Acme Voice"
  $ KLEN_DATABASE_URL=sqlite:./data/klen.db klen-webhooks accounts create --name Acme --json`,
  );
}
