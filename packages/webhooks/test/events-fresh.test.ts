/** src/events.ts must be exactly what scripts/gen-types.mjs generates from the schemas. */
import * as assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { test } from "node:test";
import * as schemas from "../src/schemas.js";
import { repoRoot } from "./helpers.js";

const pkg = resolve(repoRoot, "packages/webhooks");

test("src/events.ts is up to date with the schemas (run scripts/gen-types.mjs)", async () => {
  const generator = (await import(resolve(pkg, "scripts/gen-types.mjs"))) as {
    generateEventTypes(s: typeof schemas): string;
  };
  const expected = generator.generateEventTypes(schemas);
  const actual = readFileSync(resolve(pkg, "src/events.ts"), "utf8");
  assert.equal(
    actual,
    expected,
    "src/events.ts is stale: rebuild and run `node packages/webhooks/scripts/gen-types.mjs`",
  );
  assert.match(actual, /^\/\/ GENERATED FILE/);
});

test("every event type has a generated interface", () => {
  const text = readFileSync(resolve(pkg, "src/events.ts"), "utf8");
  for (const type of schemas.EVENT_TYPES)
    assert.match(text, new RegExp(`event_type: "${type.replace(".", "\\.")}";`));
});
