/**
 * The benchmark's webhook receiver, run in its own process (forked by bench/main.ts) so that its
 * CPU shows up as the separate consumer it is in production. It listens on a few loopback ports
 * (endpoints are spread over them, as different customers' servers would be) plus one "dead"
 * port that accepts the request and never answers (the isolation scenario's timing-out endpoint).
 *
 * Every request is checked: the HMAC-SHA256 signature of `{id}.{timestamp}.{body}` against the
 * endpoint's secret (node:crypto, the same work any Standard Webhooks verifier does). Arrival
 * times are `performance.timeOrigin + performance.now()`, the clock the load generator uses too.
 * The parent talks to it over IPC: configure, reset, counts, ledger digests, arrival lists.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { monitorEventLoopDelay } from "node:perf_hooks";

export type ReceiverRequest =
  | { type: "start"; ports: number }
  | { type: "secrets"; secrets: Record<string, string> }
  | { type: "reset"; keys: boolean }
  | { type: "count" }
  | { type: "digest" }
  | { type: "arrivals" }
  | { type: "pause" }
  | { type: "stop" };

export interface PathDigest {
  distinct: number;
  total: number;
  /** XOR of the first 12 hex digits of sha1(webhook-id) over distinct ids: order-free set digest. */
  digest: string;
}

export type ReceiverReply =
  | { type: "started"; ports: number[]; deadPort: number }
  | { type: "ok" }
  | {
      type: "count";
      distinct: number;
      total: number;
      badSignatures: number;
      lastAt: number;
      firstAt: number;
      /** Requests the dead port has read since the reset. */
      dead: number;
    }
  | {
      type: "digest";
      paths: Record<string, PathDigest>;
      badSignatures: number;
      firstAt: number;
      lastAt: number;
    }
  | { type: "arrivals"; arrivals: Array<[string, number]> }
  | { type: "pause"; maxMs: number };

/** The digest of one id, as a number that XORs exactly (48 bits fit a double). */
export function idHash(id: string): number {
  return Number.parseInt(createHash("sha1").update(id).digest("hex").slice(0, 12), 16);
}

/** XOR of two 48-bit integers held in doubles (JS bit operators are 32-bit). */
export function xor48(a: number, b: number): number {
  const hi = (Math.floor(a / 2 ** 24) ^ Math.floor(b / 2 ** 24)) >>> 0;
  const lo = ((a % 2 ** 24) ^ (b % 2 ** 24)) >>> 0;
  return hi * 2 ** 24 + lo;
}

const now = () => performance.timeOrigin + performance.now();

interface PathState {
  /** webhook-id → first arrival time. */
  seen: Map<string, number>;
  total: number;
}

let paths = new Map<string, PathState>();
let keys: Map<string, number> | undefined;
let secrets = new Map<string, Buffer>();
let badSignatures = 0;
let distinct = 0;
let total = 0;
let firstAt = 0;
let lastAt = 0;
let dead = 0;
const servers: Server[] = [];
/** This process's event-loop delay: its longest pause since the last `pause` request. */
const delay = monitorEventLoopDelay({ resolution: 5 });
delay.enable();
const sockets = new Set<Socket>();

// `{"event_type":"call.started","call":{"id":12,` — the key the load generator also knows.
const KEY = /^\{"event_type":"(call\.[a-z]+)","call":\{"id":(\d+)/;

function verify(path: string, req: IncomingMessage, body: Buffer): boolean {
  const key = secrets.get(path);
  if (!key) return false;
  const id = String(req.headers["webhook-id"] ?? "");
  const ts = String(req.headers["webhook-timestamp"] ?? "");
  const sigs = String(req.headers["webhook-signature"] ?? "").split(" ");
  const mac = createHmac("sha256", key).update(`${id}.${ts}.`).update(body).digest();
  return sigs.some((s) => {
    if (!s.startsWith("v1,")) return false;
    const got = Buffer.from(s.slice(3), "base64");
    return got.length === mac.length && timingSafeEqual(got, mac);
  });
}

function onRequest(req: IncomingMessage, res: ServerResponse): void {
  const chunks: Buffer[] = [];
  req.on("data", (c: Buffer) => chunks.push(c));
  req.on("end", () => {
    const at = now();
    const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    const path = req.url ?? "/";
    if (!verify(path, req, body)) badSignatures++;
    const id = String(req.headers["webhook-id"] ?? "");
    let p = paths.get(path);
    if (!p) {
      p = { seen: new Map(), total: 0 };
      paths.set(path, p);
    }
    p.total++;
    total++;
    if (!p.seen.has(id)) {
      p.seen.set(id, at);
      distinct++;
      if (firstAt === 0) firstAt = at;
      lastAt = at;
      if (keys) {
        const m = KEY.exec(body.subarray(0, 96).toString("latin1"));
        if (m) keys.set(`${m[2]}:${m[1]}:${path}`, at);
      }
    }
    res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
    res.end("ok");
  });
}

async function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<number> {
  const server = createServer({ keepAliveTimeout: 60_000 }, handler);
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return (server.address() as AddressInfo).port;
}

function reply(msg: ReceiverReply): void {
  process.send?.(msg);
}

// The bench died: nothing will ask for results any more.
process.on("disconnect", () => process.exit(0));

process.on("message", async (msg: ReceiverRequest) => {
  switch (msg.type) {
    case "start": {
      const ports: number[] = [];
      for (let i = 0; i < msg.ports; i++) ports.push(await listen(onRequest));
      // The dead endpoint: reads the request, never answers; the sender's timeout has to fire.
      const deadPort = await listen((req) => {
        dead++;
        req.resume();
      });
      reply({ type: "started", ports, deadPort });
      break;
    }
    case "secrets":
      for (const [path, secret] of Object.entries(msg.secrets)) {
        secrets.set(path, Buffer.from(secret.replace(/^whsec_/, ""), "base64"));
      }
      reply({ type: "ok" });
      break;
    case "reset":
      paths = new Map();
      keys = msg.keys ? new Map() : undefined;
      secrets = new Map();
      badSignatures = 0;
      distinct = 0;
      total = 0;
      firstAt = 0;
      lastAt = 0;
      dead = 0;
      for (const s of sockets) s.destroy();
      reply({ type: "ok" });
      break;
    case "count":
      reply({ type: "count", distinct, total, badSignatures, firstAt, lastAt, dead });
      break;
    case "digest": {
      const out: Record<string, PathDigest> = {};
      for (const [path, p] of paths) {
        let d = 0;
        for (const id of p.seen.keys()) d = xor48(d, idHash(id));
        out[path] = { distinct: p.seen.size, total: p.total, digest: d.toString(16) };
      }
      reply({ type: "digest", paths: out, badSignatures, firstAt, lastAt });
      break;
    }
    case "arrivals":
      reply({ type: "arrivals", arrivals: keys ? [...keys] : [] });
      break;
    case "pause":
      reply({ type: "pause", maxMs: delay.max / 1e6 });
      delay.reset();
      break;
    case "stop":
      for (const s of sockets) s.destroy();
      for (const s of servers) s.close();
      process.exit(0);
  }
});
