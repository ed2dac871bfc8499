/**
 * The package as a customer's project sees it: ES modules and CommonJS (Node before 20.19 cannot
 * `require()` an ES module), TypeScript's resolution modes, and what `npm pack` ships.
 */
import * as assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import { seedBody } from "./helpers.js";

const PACKAGE_DIR = fileURLToPath(new URL("../../", import.meta.url));
const SUBPATHS = ["", "/express", "/fastify", "/fetch", "/node", "/schemas"];
const require = createRequire(import.meta.url);

describe("packaging", () => {
  test("require() gets the CommonJS build, import the ES one, for every entry point", async () => {
    for (const sub of SUBPATHS) {
      assert.match(require.resolve(`@klen/webhooks${sub}`), /\/dist\/cjs\//, sub);
      assert.match(import.meta.resolve(`@klen/webhooks${sub}`), /\/dist\/src\//, sub);
    }
  });

  test("the CommonJS build works where Node cannot require() an ES module", () => {
    // --no-experimental-require-module: Node 20.16–20.18 behaviour on this Node.
    const script = `
      const { Webhook, WebhookVerificationError } = require("@klen/webhooks");
      const { nodeWebhookHandler } = require("@klen/webhooks/node");
      const { expressWebhook } = require("@klen/webhooks/express");
      const wh = new Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
      const body = JSON.stringify({ hello: 1 });
      wh.verifySignature(body, { "webhook-id": "evt_1", "webhook-timestamp": "1700000000",
        "webhook-signature": wh.sign("evt_1", 1700000000, body) }, { now: 1700000000 });
      let code;
      try { wh.verify(body, { "webhook-id": "evt_1", "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,AAAA" }, { now: 1700000000 }); } catch (e) {
        code = e instanceof WebhookVerificationError ? e.code : "other"; }
      console.log(JSON.stringify({ code, node: typeof nodeWebhookHandler, express: typeof expressWebhook }));`;
    const out = execFileSync(process.execPath, ["--no-experimental-require-module", "-e", script], {
      cwd: PACKAGE_DIR,
      encoding: "utf8",
    });
    assert.deepEqual(JSON.parse(out), {
      code: "no_matching_signature",
      node: "function",
      express: "function",
    });
  });

  test("errors are instances across the two builds: a bad signature from one is a 400 in an adapter of the other", async () => {
    const esm = await import("@klen/webhooks");
    const cjs = require("@klen/webhooks") as typeof esm;
    const headers = {
      "webhook-id": "evt_1",
      "webhook-timestamp": "1700000000",
      "webhook-signature": "v1,AAAA",
    };
    const fromCjs = (() => {
      try {
        new cjs.Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").verify("{}", headers, { now: 1700000000 });
      } catch (err) {
        return err;
      }
    })();
    assert.ok(fromCjs instanceof esm.WebhookVerificationError);
    assert.ok(fromCjs instanceof cjs.WebhookVerificationError);
    assert.ok(!(fromCjs instanceof esm.WebhookKeyError));
    assert.ok(!(new Error("x") instanceof esm.WebhookVerificationError));
    // The CommonJS adapters' own check, given what the ES build threw.
    const quiet = { onRejected: () => {} };
    const { rejection } = require(`${PACKAGE_DIR}dist/cjs/adapters/common.js`) as {
      rejection(
        err: unknown,
        opts: { onRejected?: () => void },
      ): { status: number; body: string } | undefined;
    };
    assert.deepEqual(rejection(new esm.WebhookVerificationError("no_matching_signature", "x"), quiet), {
      status: 400,
      body: '{"error":{"code":"no_matching_signature"}}',
    });
    assert.equal(rejection(new esm.BodyTooLargeError(10), quiet)?.status, 413);
  });

  test("express: the middleware of one build and webhookDelivery of the other share the verified delivery", async () => {
    const esm = await import("@klen/webhooks/express");
    const cjs = require("@klen/webhooks/express") as typeof esm;
    const { Webhook } = await import("@klen/webhooks");
    const wh = new Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    const body = Buffer.from(seedBody());
    const now = Math.floor(Date.now() / 1000);
    const headers = {
      "webhook-id": "evt_mixed",
      "webhook-timestamp": String(now),
      "webhook-signature": wh.sign("evt_mixed", now, body),
    };
    for (const [middleware, read] of [
      [esm.expressWebhook, cjs.webhookDelivery],
      [cjs.expressWebhook, esm.webhookDelivery],
    ] as const) {
      const req = { headers, body };
      let seen: string | undefined;
      await middleware(wh)(req as never, {} as never, (err?: unknown) => {
        if (err) throw err;
        seen = read(req).event.event_type;
      });
      assert.equal(seen, "call.ended");
    }
  });

  test("TypeScript resolves every entry point and its types from CommonJS, ESM and node10 projects", () => {
    const dir = mkdtempSync(join(tmpdir(), "klen-sdk-ts-"));
    try {
      mkdirSync(join(dir, "node_modules", "@klen"), { recursive: true });
      symlinkSync(PACKAGE_DIR, join(dir, "node_modules", "@klen", "webhooks"), "dir");
      const source = `import { Webhook, type CallEvent } from "@klen/webhooks";
import { expressWebhook } from "@klen/webhooks/express";
import { fastifyWebhook } from "@klen/webhooks/fastify";
import { fetchWebhookHandler } from "@klen/webhooks/fetch";
import { nodeWebhookHandler } from "@klen/webhooks/node";
import { EVENT_TYPES } from "@klen/webhooks/schemas";
export function check(e: CallEvent): string | null {
  if (e.event_type === "call.failed") return e.call.failure_reason; // narrowed
  return [Webhook, expressWebhook, fastifyWebhook, fetchWebhookHandler, nodeWebhookHandler, EVENT_TYPES].length ? null : null;
}
`;
      const modes: Array<{ name: string; type: "module" | "commonjs"; options: ts.CompilerOptions }> = [
        { name: "node16, CommonJS", type: "commonjs", options: { module: ts.ModuleKind.Node16 } },
        { name: "nodenext, ESM", type: "module", options: { module: ts.ModuleKind.NodeNext } },
        {
          name: "bundler",
          type: "module",
          options: { module: ts.ModuleKind.ESNext, moduleResolution: ts.ModuleResolutionKind.Bundler },
        },
        {
          name: "node10",
          type: "commonjs",
          options: { module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10 },
        },
      ];
      for (const mode of modes) {
        writeFileSync(join(dir, "package.json"), JSON.stringify({ type: mode.type }));
        writeFileSync(join(dir, "index.ts"), source);
        const program = ts.createProgram([join(dir, "index.ts")], {
          ...mode.options,
          strict: true,
          noEmit: true,
          skipLibCheck: false,
          target: ts.ScriptTarget.ES2022,
          lib: ["lib.es2023.d.ts", "lib.dom.d.ts"],
          types: ["node"],
          typeRoots: [join(PACKAGE_DIR, "../../node_modules/@types")],
        });
        const problems = ts
          .getPreEmitDiagnostics(program)
          .map((d) => ts.flattenDiagnosticMessageText(d.messageText, "\n"));
        assert.deepEqual(problems, [], mode.name);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("npm pack ships both builds and the sources their maps point to, and no tests", () => {
    const [pack] = JSON.parse(
      execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
        cwd: PACKAGE_DIR,
        encoding: "utf8",
      }),
    ) as Array<{ files: Array<{ path: string }> }>;
    const files = new Set(pack!.files.map((f) => f.path));
    for (const f of [
      "dist/src/index.js",
      "dist/src/index.d.ts",
      "dist/cjs/index.js",
      "dist/cjs/index.d.ts",
      "dist/cjs/package.json",
      "dist/cjs/adapters/express.js",
      "src/index.ts",
      "README.md",
      "LICENSE",
    ]) {
      assert.ok(files.has(f), f);
    }
    assert.deepEqual(
      [...files].filter((f) => f.includes("test")),
      [],
    );
  });
});
