// Runs every compiled test file with node's built-in runner. Node 20's `--test` takes no globs,
// so the files are listed here; CI reads the runner's own summary line.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const roots = process.argv.slice(2).length
  ? process.argv.slice(2)
  : ["packages/webhooks/dist/test", "packages/server/dist/test"];
const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p);
    else if (name.endsWith(".test.js")) files.push(p);
  }
};
for (const r of roots) {
  try {
    walk(r);
  } catch {
    /* a package without tests */
  }
}
if (files.length === 0) {
  console.error("no test files found under", roots.join(", "));
  process.exit(1);
}
const r = spawnSync(process.execPath, ["--test", "--test-concurrency=2", "--test-reporter=spec", ...files], {
  stdio: "inherit",
});
process.exit(r.status ?? 1);
