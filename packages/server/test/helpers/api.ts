/** A small client for the server's API, used by tests (real HTTP over loopback). */
export function apiClient(baseUrl: string, apiKey: string) {
  const call = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${baseUrl}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${apiKey}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = text;
    }
    return { status: res.status, body: json, headers: res.headers };
  };
  return {
    baseUrl,
    apiKey,
    get: (path: string) => call("GET", path),
    post: (path: string, body?: unknown, headers?: Record<string, string>) =>
      call("POST", path, body ?? {}, headers),
    patch: (path: string, body: unknown) => call("PATCH", path, body),
    del: (path: string) => call("DELETE", path),
    raw: call,
  };
}
export type ApiClient = ReturnType<typeof apiClient>;

/** Creates what most tests need: an agent, and optionally an endpoint pointing at `url`. */
export async function setupAccount(
  api: ApiClient,
  opts: { endpointUrl?: string; endpoint?: Record<string, unknown> } = {},
) {
  const agent = await api.post("/v1/agents", { name: "Customer Support", assistant_id: "assistant_abc123" });
  if (agent.status !== 201) throw new Error(`agent: ${agent.status} ${JSON.stringify(agent.body)}`);
  let endpoint: any;
  if (opts.endpointUrl) {
    const r = await api.post("/v1/endpoints", { url: opts.endpointUrl, ...(opts.endpoint ?? {}) });
    if (r.status !== 201) throw new Error(`endpoint: ${r.status} ${JSON.stringify(r.body)}`);
    endpoint = r.body;
  }
  return { agentId: agent.body.id as number, endpoint };
}

/** Drives a call through the seed's normal workflow (start, end, transcript, summary). */
export async function runCall(api: ApiClient, agentId: number, phone = "+15551234567") {
  const created = await api.post("/v1/calls", {
    agent_id: agentId,
    type: "inbound",
    phone_number: phone,
    klen_call_id: "call_abc123",
  });
  if (created.status !== 201) throw new Error(`call: ${created.status} ${JSON.stringify(created.body)}`);
  const id = created.body.id as number;
  for (const [step, body] of [
    ["start", {}],
    ["end", { summary: "Customer asked about billing." }],
    ["transcript", { transcript: "Agent: Hello!\nCustomer: Hi, I have a billing question." }],
    [
      "summary",
      { summary: "The customer asked about a billing discrepancy; the agent explained the charge." },
    ],
  ] as const) {
    const r = await api.post(`/v1/calls/${id}/${step}`, body);
    if (r.status !== 200) throw new Error(`${step}: ${r.status} ${JSON.stringify(r.body)}`);
  }
  return id;
}

/** Creates a call and starts it (emits call.started); returns the call's id. */
export async function startedCall(
  api: ApiClient,
  agentId: number,
  phone: string,
  type = "inbound",
): Promise<number> {
  const c = await api.post("/v1/calls", { agent_id: agentId, type, phone_number: phone });
  if (c.status !== 201) throw new Error(`call: ${c.status} ${JSON.stringify(c.body)}`);
  const s = await api.post(`/v1/calls/${c.body.id}/start`, {});
  if (s.status !== 200) throw new Error(`start: ${s.status} ${JSON.stringify(s.body)}`);
  return c.body.id as number;
}
