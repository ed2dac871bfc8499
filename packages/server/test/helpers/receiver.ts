import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { Webhook } from "standardwebhooks";
import { waitFor } from "./wait.js";

export interface Received {
  n: number;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  /** The webhook-id header. */
  id: string;
  json: any;
  /** When the whole request had arrived (Date.now()). */
  at: number;
}

/** What the receiver answers to its n-th request (1-based): status, optional headers, optional body. */
export type Responder = (
  req: Received,
) =>
  | { status: number; headers?: Record<string, string>; body?: string; hang?: boolean; delayMs?: number }
  | number;

/**
 * A real HTTP receiver on loopback that records every request. With a secret it verifies each one
 * with the `standardwebhooks` npm package and records the failures, so a test can assert that
 * every delivery was correctly signed by an independent implementation.
 */
export async function startReceiver(opts: { secret?: string; respond?: Responder } = {}) {
  const requests: Received[] = [];
  const verifyFailures: string[] = [];
  let secret = opts.secret;
  const sockets = new Set<import("node:net").Socket>();
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      let json: unknown;
      try {
        json = JSON.parse(body);
      } catch {
        json = undefined;
      }
      const rec: Received = {
        n: requests.length + 1,
        path: req.url ?? "/",
        headers: req.headers,
        body,
        id: String(req.headers["webhook-id"] ?? ""),
        json,
        at: Date.now(),
      };
      if (secret) {
        try {
          new Webhook(secret).verify(body, req.headers as Record<string, string>);
        } catch (err) {
          verifyFailures.push(`${rec.id}: ${(err as Error).message}`);
        }
      }
      requests.push(rec);
      const r = opts.respond ? opts.respond(rec) : 200;
      const spec = typeof r === "number" ? { status: r } : r;
      if (spec.hang) return; // never answer: the sender's timeout must fire
      const answer = () => {
        res.writeHead(spec.status, { "content-type": "text/plain", ...(spec.headers ?? {}) });
        res.end(spec.body ?? "ok");
      };
      if (spec.delayMs) setTimeout(answer, spec.delayMs);
      else answer();
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    verifyFailures,
    setSecret(s: string) {
      secret = s;
    },
    /** Waits until at least `n` requests arrived. */
    waitForCount(n: number, timeoutMs?: number) {
      return waitFor(
        `${n} requests at receiver (have ${requests.length})`,
        () => requests.length >= n,
        timeoutMs,
      );
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}
export type Receiver = Awaited<ReturnType<typeof startReceiver>>;
