import { EVENT_TYPES } from "@klen/webhooks/schemas";
import { type Command, Option } from "commander";
import { apiClient, type EventObject, type Page } from "./api-client.js";
import {
  type ApiOpts,
  type PageOpts,
  pageQuery,
  positiveInt,
  run,
  withApiOptions,
  withPageOptions,
} from "./command-kit.js";

/** `events list|get`: the account's events and the exact body each was delivered with. */
export function registerEventCommands(program: Command): void {
  const events = program
    .command("events")
    .description("list the account's events and show the body one was delivered with")
    .addHelpText(
      "after",
      "\nExamples:\n  $ klen-webhooks events list --call-id 42\n  $ klen-webhooks events get evt_01j9z3…",
    );
  withApiOptions(
    withPageOptions(
      events
        .command("list")
        .description("recent events, newest first (GET /v1/events)")
        .addOption(new Option("--event-type <type>", "only this type").choices(EVENT_TYPES))
        .option("--call-id <id>", "only this call's", positiveInt("--call-id")),
      "those",
    ),
  )
    .addHelpText(
      "after",
      `
One line per event: id, type, call, created_at. Their deliveries: deliveries list --event-id evt_….

Examples:
  $ klen-webhooks events list
  $ klen-webhooks events list --event-type call.failed --after 2026-11-24T00:00:00Z
  $ klen-webhooks events list --call-id 42 --json`,
    )
    .action(
      run<ApiOpts & PageOpts & { eventType?: string; callId?: number }>(async (o, out) => {
        const q = pageQuery(o, { event_type: o.eventType, call_id: o.callId });
        const page = await apiClient(o).get<Page<EventObject>>(`/v1/events?${q}`);
        if (out.json) out.data(page);
        else if (page.data.length === 0) out.line("no events");
        else {
          for (const e of page.data)
            out.line(`${e.id}  ${e.event_type.padEnd(15)}  call ${e.call_id}  ${out.dim(e.created_at)}`);
          if (page.next_cursor) out.line(out.dim(`more: --cursor ${page.next_cursor}`));
        }
        return 0;
      }),
    );
  withApiOptions(
    events
      .command("get")
      .description("an event and the body it was delivered with (GET /v1/events/{id})")
      .argument("<event_id>", "the event (evt_…)"),
  )
    .addHelpText(
      "after",
      `
Prints the event's line, then its body indented (the delivered bytes are one line; --json gives
the API's event object, with the body parsed as "payload").

Examples:
  $ klen-webhooks events get evt_01j9z3…
  $ klen-webhooks events get evt_01j9z3… --json`,
    )
    .action(
      run<ApiOpts>(async (o, out, cmd) => {
        const id = encodeURIComponent(cmd.processedArgs[0] as string);
        const e = await apiClient(o).get<EventObject>(`/v1/events/${id}`);
        if (out.json) out.data(e);
        else {
          out.line(`${e.id}  ${e.event_type}  call ${e.call_id}  ${out.dim(e.created_at)}`);
          for (const line of JSON.stringify(e.payload, null, 2).split("\n")) out.line(line);
        }
        return 0;
      }),
    );
}
