/** Each adapter against a real server of its framework on 127.0.0.1, port 0. */
import * as assert from "node:assert/strict";
import { once } from "node:events";
import { createServer } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { after, before, describe, test } from "node:test";
import { serve } from "@hono/node-server";
import express from "express";
import Fastify from "fastify";
import { Hono } from "hono";
import { readFetchBody } from "../src/adapters/body.js";
import { expressWebhook, webhookDelivery } from "../src/adapters/express.js";
import { fastifyWebhook } from "../src/adapters/fastify.js";
import { fetchWebhookHandler, verifyRequest } from "../src/adapters/fetch.js";
import { nodeWebhookHandler } from "../src/adapters/node.js";
import { createIdempotency, WebhookVerificationError } from "../src/index.js";
import { adapterContract } from "./adapter-contract.js";
import { baseUrl, seedBody, seedEvent, signedHeaders, webhook } from "./helpers.js";

async function listen(server: ReturnType<typeof createServer>) {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return baseUrl(server.address());
}

function closer(server: ReturnType<typeof createServer>) {
  return async () => {
    server.closeAllConnections();
    server.close();
    await once(server, "close");
  };
}

adapterContract("node:http", async (opts) => {
  const server = createServer(nodeWebhookHandler(webhook, opts));
  return { url: `${await listen(server)}/`, close: closer(server) };
});

adapterContract("express", async (opts) => {
  const app = express();
  app.post("/webhooks/klen", expressWebhook(webhook, opts));
  app.use(express.json()); // the rest of the app parses JSON; the webhook route is mounted first
  const server = createServer(app);
  return { url: `${await listen(server)}/webhooks/klen`, close: closer(server) };
});

adapterContract("fastify", async (opts) => {
  const app = Fastify();
  await app.register(fastifyWebhook, { ...opts, prefix: "/webhooks/klen", webhook });
  app.post("/other", async (req) => ({ parsed: req.body })); // outside the plugin: JSON still parsed
  await app.listen({ port: 0, host: "127.0.0.1" });
  return { url: `${baseUrl(app.server.address())}/webhooks/klen`, close: () => app.close() };
});

adapterContract("hono (fetch Request/Response)", async (opts) => {
  const app = new Hono();
  const handler = fetchWebhookHandler(webhook, opts);
  app.post("/webhooks/klen", (c) => handler(c.req.raw));
  const server = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" });
  await once(server, "listening");
  const url = `${baseUrl(server.address() as AddressInfo)}/webhooks/klen`;
  return {
    url,
    close: async () => {
      (server as ReturnType<typeof createServer>).closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
});

describe("express middleware mode", () => {
  let server: ReturnType<typeof createServer>;
  let url: string;
  const routeRuns: string[] = [];
  before(async () => {
    const app = express();
    // With express.raw() on the route the middleware takes the Buffer it left.
    app.post("/raw", express.raw({ type: "*/*" }), expressWebhook(webhook), (req, res) => {
      res.json({ type: webhookDelivery(req).event.event_type, id: webhookDelivery(req).id });
    });
    app.post("/stream", expressWebhook(webhook), (req, res) => {
      res.json({ type: webhookDelivery(req).event.event_type });
    });
    // next() mode with idempotency: the route runs once per webhook-id; a failed answer gives the
    // id back for the retry.
    app.post("/once", expressWebhook(webhook, { idempotency: createIdempotency() }), (req, res) => {
      const { id } = webhookDelivery(req);
      routeRuns.push(id);
      if (id.startsWith("evt_fail_first") && routeRuns.filter((r) => r === id).length === 1)
        return void res.status(503).json({ busy: true });
      res.json({ ran: id });
    });
    // The classic mistake: express.json() first. Reported loudly to the developer, never a pass.
    app.post("/parsed", express.json(), expressWebhook(webhook), (_req, res) => {
      res.json({ ok: true });
    });
    app.use((err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
      res.status(500).json({ misconfigured: /express\.json/.test(err.message) });
    });
    server = createServer(app);
    url = await listen(server);
  });
  after(() => closer(server)());

  test("after express.raw(), and reading the stream itself, next() sees the typed event", async () => {
    const body = seedBody();
    for (const path of ["/raw", "/stream"]) {
      const res = await fetch(`${url}${path}`, {
        method: "POST",
        body,
        headers: signedHeaders(body, "evt_mw"),
      });
      assert.equal(res.status, 200, path);
      assert.equal(((await res.json()) as { type: string }).type, "call.ended");
    }
  });

  test("with idempotency, next() reaches the route once per webhook-id; a route's failure lets the retry through", async () => {
    const body = seedBody();
    const post = (id: string) =>
      fetch(`${url}/once`, { method: "POST", body, headers: signedHeaders(body, id) }).then(async (r) => ({
        status: r.status,
        json: await r.json(),
      }));
    const first = await post("evt_once");
    assert.deepEqual(first, { status: 200, json: { ran: "evt_once" } });
    const repeats = await Promise.all([post("evt_once"), post("evt_once")]);
    for (const r of repeats) assert.deepEqual(r, { status: 200, json: { received: true, duplicate: true } });
    // Concurrent first deliveries of one id: one reaches the route, the other waits and is a duplicate.
    const burst = await Promise.all([post("evt_burst"), post("evt_burst"), post("evt_burst")]);
    assert.equal(burst.filter((r) => "ran" in r.json).length, 1);
    const failed = await post("evt_fail_first");
    assert.deepEqual(failed, { status: 503, json: { busy: true } });
    const retried = await post("evt_fail_first");
    assert.deepEqual(retried, { status: 200, json: { ran: "evt_fail_first" } });
    assert.deepEqual(routeRuns.filter((id) => id !== "evt_mw").sort(), [
      "evt_burst",
      "evt_fail_first",
      "evt_fail_first",
      "evt_once",
    ]);
  });

  test("re-serialised JSON after express.raw() is 400", async () => {
    const body = seedBody();
    const res = await fetch(`${url}/raw`, {
      method: "POST",
      body: JSON.stringify(seedEvent()),
      headers: signedHeaders(body, "evt_mw2"),
    });
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { error: { code: "no_matching_signature" } });
  });

  test("express.json() before the middleware is reported as a misconfiguration", async () => {
    const body = seedBody();
    const res = await fetch(`${url}/parsed`, {
      method: "POST",
      body,
      headers: signedHeaders(body, "evt_mw3"),
    });
    assert.equal(res.status, 500);
    assert.deepEqual(await res.json(), { misconfigured: true });
  });
});

describe("node:http: what never reaches the handler", () => {
  test("an onError that throws is logged; the server answers 500 and keeps running", async () => {
    const handler = nodeWebhookHandler(webhook, {
      onEvent: () => {
        throw new Error("handler failed");
      },
      onError: () => {
        throw new Error("logger down");
      },
    });
    const logged: unknown[][] = [];
    const original = console.error;
    console.error = (...args: unknown[]) => void logged.push(args);
    const server = createServer(handler);
    try {
      const url = `${await listen(server)}/`;
      for (const id of ["evt_onerror_1", "evt_onerror_2"]) {
        const body = seedBody();
        const res = await fetch(url, { method: "POST", body, headers: signedHeaders(body, id) });
        assert.equal(res.status, 500);
        assert.deepEqual(await res.json(), { error: { code: "handler_failed" } });
      }
      assert.equal(logged.length, 2);
      assert.match(String(logged[0]?.[0]), /onError threw/);
      assert.match(String(logged[0]?.[2]), /logger down/);
    } finally {
      console.error = original;
      await closer(server)();
    }
  });

  test("a refused request is logged with its reason and what to check, unless onRejected takes it", async () => {
    const warned: unknown[][] = [];
    const original = console.warn;
    console.warn = (...args: unknown[]) => void warned.push(args);
    const quiet = createServer(nodeWebhookHandler(webhook, { onEvent: () => {}, onRejected: () => {} }));
    const server = createServer(nodeWebhookHandler(webhook, { onEvent: () => {} }));
    try {
      const body = seedBody();
      const headers = signedHeaders(body, "evt_wrong_secret");
      const tampered = `${body} `;
      for (const url of [`${await listen(quiet)}/`, `${await listen(server)}/`])
        assert.equal((await fetch(url, { method: "POST", body: tampered, headers })).status, 400);
      assert.equal(warned.length, 1, "only the adapter without onRejected logs");
      assert.match(
        String(warned[0]?.[0]),
        /^@klen\/webhooks: refused a request \(no_matching_signature\): .*whsec_ secret/,
      );
    } finally {
      console.warn = original;
      await closer(quiet)();
      await closer(server)();
    }
  });

  test("nodeWebhookHandler answers a method other than POST with 405 and Allow: POST, logging nothing", async () => {
    const rejected: unknown[] = [];
    const server = createServer(
      nodeWebhookHandler(webhook, { onEvent: () => {}, onRejected: (r) => rejected.push(r) }),
    );
    try {
      const url = `${await listen(server)}/`;
      for (const method of ["GET", "PUT", "HEAD"]) {
        const r = await fetch(url, { method, ...(method === "PUT" ? { body: "{}" } : {}) });
        assert.equal(r.status, 405, method);
        assert.equal(r.headers.get("allow"), "POST");
        if (method !== "HEAD") assert.deepEqual(await r.json(), { error: { code: "method_not_allowed" } });
      }
      assert.deepEqual(rejected, []);
      // A POST is still verified: unsigned, refused.
      assert.equal((await fetch(url, { method: "POST", body: "{}" })).status, 400);
      assert.equal(rejected.length, 1);
    } finally {
      await closer(server)();
    }
  });

  test("an async onRejected that rejects is logged; the receiver keeps running", async () => {
    const logged: unknown[][] = [];
    const original = console.error;
    console.error = (...args: unknown[]) => void logged.push(args);
    const server = createServer(
      nodeWebhookHandler(webhook, {
        onEvent: () => {},
        onRejected: async () => {
          throw new Error("log shipper down");
        },
      }),
    );
    try {
      const url = `${await listen(server)}/`;
      for (let i = 0; i < 2; i++)
        assert.equal((await fetch(url, { method: "POST", body: "{}" })).status, 400, "unsigned: refused");
      await new Promise((r) => setImmediate(r));
      assert.equal(logged.length, 2);
      assert.match(String(logged[0]?.[0]), /onRejected threw while reporting/);
      assert.match(String(logged[0]?.at(-1)), /log shipper down/);
    } finally {
      console.error = original;
      await closer(server)();
    }
  });

  test("onRejected and onError written as methods of the options keep their this", async () => {
    const opts = {
      rejected: 0,
      errors: 0,
      onEvent() {
        throw new Error("handler failed");
      },
      onRejected(this: { rejected: number }) {
        this.rejected++;
      },
      onError(this: { errors: number }) {
        this.errors++;
      },
    };
    const server = createServer(nodeWebhookHandler(webhook, opts));
    try {
      const url = `${await listen(server)}/`;
      assert.equal((await fetch(url, { method: "POST", body: "{}" })).status, 400);
      const body = seedBody();
      const res = await fetch(url, { method: "POST", body, headers: signedHeaders(body, "evt_this") });
      assert.equal(res.status, 500);
      assert.deepEqual([opts.rejected, opts.errors], [1, 1]);
    } finally {
      await closer(server)();
    }
  });

  test("a toleranceSeconds no verification could use is refused when the adapter is made", async () => {
    const verify = { toleranceSeconds: "five minutes" as never };
    const onEvent = () => {};
    assert.throws(() => nodeWebhookHandler(webhook, { onEvent, verify }), /toleranceSeconds/);
    assert.throws(() => fetchWebhookHandler(webhook, { onEvent, verify }), /toleranceSeconds/);
    assert.throws(() => expressWebhook(webhook, { verify }), /toleranceSeconds/);
    await assert.rejects(fastifyWebhook({} as never, { webhook, onEvent, verify }), /toleranceSeconds/);
    // As an environment variable gives it: taken.
    nodeWebhookHandler(webhook, { onEvent, verify: { toleranceSeconds: "600" } });
  });

  test("a maxBodyBytes that bounds nothing (NaN from an unset variable, 0, words) is refused when the adapter is made", async () => {
    const onEvent = () => {};
    for (const maxBodyBytes of [Number.NaN, 0, -1, "lots" as never, "" as never]) {
      const message = /maxBodyBytes/;
      assert.throws(() => nodeWebhookHandler(webhook, { onEvent, maxBodyBytes }), message);
      assert.throws(() => fetchWebhookHandler(webhook, { onEvent, maxBodyBytes }), message);
      assert.throws(() => expressWebhook(webhook, { maxBodyBytes }), message);
      await assert.rejects(fastifyWebhook({} as never, { webhook, onEvent, maxBodyBytes }), message);
      // The readers used on their own, too: before, NaN compared false with every size.
      await assert.rejects(
        readFetchBody(new Request("http://localhost/", { method: "POST", body: "{}" }), maxBodyBytes),
        message,
      );
    }
    // A string of digits (an environment variable) is a bound, and holds.
    const bounded = fetchWebhookHandler(webhook, { onEvent, maxBodyBytes: "64" as never });
    const res = await bounded(new Request("http://localhost/", { method: "POST", body: "x".repeat(65) }));
    assert.equal(res.status, 413);
  });

  test("a client gone mid-body is not reported as an error", async () => {
    const errors: unknown[] = [];
    const handler = nodeWebhookHandler(webhook, { onEvent: () => {}, onError: (e) => errors.push(e) });
    let arrived!: () => void;
    const reading = new Promise<void>((resolve) => {
      arrived = resolve;
    });
    let done!: () => void;
    const handled = new Promise<void>((resolve) => {
      done = resolve;
    });
    const server = createServer(async (req, res) => {
      const read = handler(req, res); // reads the body from here on
      arrived();
      await read;
      done();
    });
    try {
      const { port } = new URL(await listen(server));
      const socket = connect(Number(port), "127.0.0.1");
      await once(socket, "connect");
      socket.write('POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"ev');
      await reading;
      socket.destroy();
      await handled;
      assert.deepEqual(errors, []);
    } finally {
      await closer(server)();
    }
  });
});

describe("a body something else read first", () => {
  /** Sends a signed seed event to `url`; returns the status and what `onError` was told. */
  async function post(url: string, errors: unknown[]) {
    const body = seedBody();
    const res = await fetch(url, { method: "POST", body, headers: signedHeaders(body, "evt_read") });
    return { status: res.status, body: await res.json(), told: errors.map((e) => (e as Error).message) };
  }

  test("node:http: a stream already read is reported as a setup mistake, not a signature mismatch", async () => {
    const errors: unknown[] = [];
    const handler = nodeWebhookHandler(webhook, { onEvent: () => {}, onError: (e) => errors.push(e) });
    const server = createServer(async (req, res) => {
      for await (const _ of req); // a middleware that consumed the body
      await handler(req, res);
    });
    try {
      const r = await post(`${await listen(server)}/`, errors);
      assert.equal(r.status, 500);
      assert.deepEqual(r.body, { error: { code: "internal_error" } });
      assert.match(r.told.join(), /body was already read/);
    } finally {
      await closer(server)();
    }
  });

  test("fetch: a Request whose body was used is reported as a setup mistake", async () => {
    const errors: unknown[] = [];
    const app = new Hono();
    const handler = fetchWebhookHandler(webhook, { onEvent: () => {}, onError: (e) => errors.push(e) });
    app.post("/webhooks/klen", async (c) => {
      await c.req.raw.text(); // a middleware that read the body
      return handler(c.req.raw);
    });
    const server = serve({ fetch: app.fetch, port: 0, hostname: "127.0.0.1" });
    await once(server, "listening");
    try {
      const r = await post(`${baseUrl(server.address() as AddressInfo)}/webhooks/klen`, errors);
      assert.equal(r.status, 500);
      assert.deepEqual(r.body, { error: { code: "internal_error" } });
      assert.match(r.told.join(), /body was already read/);
    } finally {
      (server as ReturnType<typeof createServer>).closeAllConnections();
      server.close();
    }
  });

  test("express.raw() with a larger limit: maxBodyBytes still answers 413", async () => {
    const app = express();
    app.post(
      "/raw",
      express.raw({ type: "*/*", limit: "5mb" }),
      expressWebhook(webhook, { maxBodyBytes: 1_000, onEvent: () => {} }),
    );
    const server = createServer(app);
    try {
      const url = await listen(server);
      const body = seedBody().padEnd(2_000, " ");
      const res = await fetch(`${url}/raw`, {
        method: "POST",
        body,
        headers: signedHeaders(body, "evt_big"),
      });
      assert.equal(res.status, 413);
      assert.deepEqual(await res.json(), { error: { code: "payload_too_large" } });
    } finally {
      await closer(server)();
    }
  });
});

describe("fetch verifyRequest", () => {
  test("verifies a Request built in-process and throws WebhookVerificationError on tampering", async () => {
    const body = seedBody();
    const headers = signedHeaders(body, "evt_req");
    const ok = await verifyRequest(
      webhook,
      new Request("http://127.0.0.1/", { method: "POST", body, headers }),
    );
    assert.equal(ok.id, "evt_req");
    assert.deepEqual(ok.event, seedEvent());
    const bad = new Request("http://127.0.0.1/", { method: "POST", body: `${body} `, headers });
    await assert.rejects(verifyRequest(webhook, bad), WebhookVerificationError);
  });
});

test("an adapter made without onEvent is refused at once, not on its first delivery (plain JavaScript)", async () => {
  const untyped = (f: unknown) => f as (...a: unknown[]) => unknown;
  for (const [name, make] of [
    ["nodeWebhookHandler", () => untyped(nodeWebhookHandler)(webhook)],
    ["nodeWebhookHandler", () => untyped(nodeWebhookHandler)(webhook, {})],
    ["fetchWebhookHandler", () => untyped(fetchWebhookHandler)(webhook)],
    ["fetchWebhookHandler", () => untyped(fetchWebhookHandler)(webhook, { onEvent: "yes" })],
  ] as const)
    assert.throws(make, { name: "TypeError", message: new RegExp(`${name}.*onEvent`) });
  const app = Fastify();
  await assert.rejects(async () => {
    await app.register(fastifyWebhook, { webhook } as never);
  }, /fastifyWebhook needs options with an onEvent/);
  const other = Fastify();
  await assert.rejects(async () => {
    await other.register(fastifyWebhook, { onEvent: () => {} } as never);
  }, /fastifyWebhook needs a webhook option/);
});
