/**
 * The core and the Fetch adapter must load on runtimes without Node built-ins (edge): no
 * static `node:` import may reach them. Checked on the emitted JavaScript, which is what runs.
 */
import * as assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { test } from "node:test";
import { repoRoot } from "./helpers.js";

const dist = resolve(repoRoot, "packages/webhooks/dist/src");
// Node-only adapters may use node types, but even they import nothing at runtime.
const files = (dir: string): string[] =>
  readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith(".js") ? [join(dir, e.name)] : [],
  );

test("no emitted module imports a node: built-in or any package at runtime", () => {
  const offenders: string[] = [];
  for (const file of files(dist)) {
    const text = readFileSync(file, "utf8");
    for (const m of text.matchAll(/^\s*(?:import|export)\b[^;]*?from\s+["']([^"']+)["']/gm)) {
      if (!m[1]!.startsWith(".")) offenders.push(`${relative(dist, file)} → ${m[1]}`);
    }
    if (/\bimport\(\s*["'](?!\.)/.test(text) || /\brequire\(/.test(text))
      offenders.push(`${relative(dist, file)} (dynamic)`);
  }
  assert.deepEqual(offenders, []);
});

test("the package has no runtime dependencies", () => {
  const pkg = JSON.parse(readFileSync(resolve(repoRoot, "packages/webhooks/package.json"), "utf8"));
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.peerDependencies, undefined);
});
