// dist/cjs holds the CommonJS build (tsconfig.cjs.json); this package is "type": "module", so
// without a package.json of its own there Node would read those files as ES modules.
import { mkdirSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const dir = fileURLToPath(new URL("../dist/cjs/", import.meta.url));
mkdirSync(dir, { recursive: true });
writeFileSync(`${dir}package.json`, `${JSON.stringify({ type: "commonjs" })}\n`);
