import { type Command, InvalidArgumentError } from "commander";
import { positiveInt } from "./command-kit.js";
import { parseEventList } from "./listen.js";

/** The filter and header options of `endpoints create` and `endpoints update`, as given. */
export interface EndpointFieldOpts {
  description?: string;
  eventTypes?: string;
  agentIds?: string;
  header?: string[];
}

/** `--header "Name: value"`, repeatable: each adds one. */
const collectHeader = (v: string, prev: string[] | undefined) => [...(prev ?? []), v];

/** Adds `--description`, `--event-types`, `--agent-ids` and `--header` to an endpoint command. */
export function withEndpointFields(cmd: Command, update: boolean): Command {
  const all = update ? "; all: every one" : " (default: all)";
  return cmd
    .option("--description <text>", "a note shown in the dashboard")
    .option("--event-types <list>", `comma-separated event types to send${all}`)
    .option("--agent-ids <list>", `comma-separated agent ids whose calls to send${all}`)
    .option(
      "--header <name:value>",
      update
        ? "a header sent with every attempt; repeat for more; replaces the endpoint's headers"
        : "a header sent with every attempt (e.g. x-team: voice); repeat for more",
      collectHeader,
    );
}

/**
 * The API body fields of those options. `all` (update) clears a filter; an empty list, an agent id
 * that is not a positive integer, or a header without a colon is a usage error.
 */
export function endpointFields(o: EndpointFieldOpts): Record<string, unknown> {
  const body: Record<string, unknown> = {};
  if (o.description !== undefined) body.description = o.description;
  if (o.eventTypes !== undefined) {
    if (o.eventTypes.trim() === "")
      throw new InvalidArgumentError("--event-types: give at least one event type, or all");
    // "all", or "*" as `listen --events` takes it: no filter.
    body.event_types =
      parseEventList(o.eventTypes.trim() === "all" ? "*" : o.eventTypes, "--event-types") ?? [];
  }
  if (o.agentIds !== undefined) {
    const raw = o.agentIds.trim();
    if (raw === "") throw new InvalidArgumentError("--agent-ids: give at least one agent id, or all");
    body.agent_ids =
      raw === "all" ? [] : raw.split(",").map((s) => positiveInt(`--agent-ids: "${s.trim()}"`)(s.trim()));
  }
  if (o.header !== undefined) {
    const headers: Record<string, string> = {};
    for (const h of o.header) {
      const colon = h.indexOf(":");
      if (colon <= 0) throw new InvalidArgumentError(`--header must be "name: value", not "${h}"`);
      const name = h.slice(0, colon).trim();
      if (Object.keys(headers).some((k) => k.toLowerCase() === name.toLowerCase()))
        throw new InvalidArgumentError(`--header: "${name}" is given twice`);
      headers[name] = h.slice(colon + 1).trim();
    }
    body.headers = headers;
  }
  return body;
}
