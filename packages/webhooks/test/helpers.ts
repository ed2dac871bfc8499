/** Shared test helpers: repository paths, a seed-shaped event, loopback servers. */
import { existsSync, readFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Webhook } from "../src/index.js";

/** The repository root: the nearest parent with a package.json declaring workspaces. */
export const repoRoot: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pkg = join(dir, "package.json");
    if (existsSync(pkg) && "workspaces" in JSON.parse(readFileSync(pkg, "utf8"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("repository root not found");
    dir = parent;
  }
})();

/** The shared folder beside the repository (CI clones the repo with shared/ next to it). */
export const sharedDir = resolve(repoRoot, "../shared");

export const SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
export const webhook = new Webhook(SECRET);

/** A `call.ended` body with the seed's shape, including non-ASCII text. */
export function seedEvent(): Record<string, unknown> {
  return {
    event_type: "call.ended",
    call: {
      id: 123,
      klen_call_id: "call_abc123",
      agent_id: 456,
      agent_name: "Customer Support — Zoë",
      status: "completed",
      type: "inbound",
      phone_number: "+15551234567",
      started_at: "2025-04-23T14:30:45Z",
      ended_at: "2025-04-23T14:35:12Z",
      duration_seconds: 267,
      summary: "Le client a demandé un remboursement 💶; résolu.",
      duration: 267,
      contact: { id: 789, name: "John Doe", email: "john@example.com" },
    },
    timestamp: "2025-04-23T14:35:15Z",
  };
}

/** The seed event pretty-printed with two spaces, as a producer might, so that re-serialising changes it. */
export function seedBody(): string {
  return JSON.stringify(seedEvent(), null, 2);
}

/** Headers of a delivery signed now. */
export function signedHeaders(
  body: string | Uint8Array,
  id = "evt_test_1",
  wh = webhook,
): Record<string, string> {
  const timestamp = Math.floor(Date.now() / 1000);
  return {
    "content-type": "application/json",
    "webhook-id": id,
    "webhook-timestamp": String(timestamp),
    "webhook-signature": wh.sign(id, timestamp, body),
  };
}

/** The base URL of a listening server bound to port 0 on loopback. */
export function baseUrl(address: AddressInfo | string | null): string {
  if (address === null || typeof address === "string") throw new Error("server is not listening on TCP");
  return `http://127.0.0.1:${address.port}`;
}

/** A deferred promise, to hold a handler until the test lets it go. */
export function deferred<T = void>(): {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
} {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}
