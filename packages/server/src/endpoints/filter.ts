import type { EventType } from "@klen/webhooks/schemas";

export interface EndpointFilter {
  id: string;
  event_types: readonly string[];
  agent_ids: readonly number[];
}

/** An endpoint gets an event when its type filter is empty or names it, and likewise for agents. */
export function matches(ep: EndpointFilter, type: EventType, agentId: number): boolean {
  if (ep.event_types.length > 0 && !ep.event_types.includes(type)) return false;
  if (ep.agent_ids.length > 0 && !ep.agent_ids.includes(agentId)) return false;
  return true;
}
