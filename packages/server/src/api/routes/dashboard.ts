import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { extname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import type { RouteModule } from "./index.js";

const here = fileURLToPath(import.meta.url);

/**
 * The dashboard's static files live in `packages/server/dashboard`, outside the compiled tree:
 * two levels further up when running from `dist/src/…` than from `src/…`.
 */
export function dashboardDir(): string | undefined {
  for (const up of ["../../../../../dashboard", "../../../../dashboard"]) {
    const dir = resolve(here, up);
    if (existsSync(join(dir, "index.html"))) return dir;
  }
  return undefined;
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".json": "application/json; charset=utf-8",
};

// Everything comes from this origin; the API is same-origin too. No inline script or style, so an
// injected string can never execute even if escaping were missed somewhere.
const CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join("; ");

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

function collect(dir: string, root = dir, out = new Map<string, Asset>()): Map<string, Asset> {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) {
      collect(path, root, out);
      continue;
    }
    const type = TYPES[extname(name)];
    if (!type) continue; // README, notes: not served
    const body = readFileSync(path);
    const etag = `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`;
    out.set(`/${relative(root, path).split(sep).join("/")}`, { body, type, etag });
  }
  return out;
}

/**
 * Serves the dashboard (PRODUCT.md §7) at `/`: a fixed set of files read once at start-up, one
 * route each, so no request path ever reaches the file system. The files hold no data: everything
 * shown comes from `/v1` with the API key the user signs in with. Names are not content-hashed,
 * so browsers revalidate every load (`no-cache` + ETag) and get a 304 when nothing changed.
 */
export const dashboardRoutes: RouteModule = (app) => {
  const dir = dashboardDir();
  if (!dir) return;
  const assets = collect(dir);
  const index = assets.get("/index.html");
  if (index) assets.set("/", index);
  for (const [path, asset] of assets) {
    app.get(path, { schema: { hide: true } }, async (req, reply) => {
      reply
        .header("content-type", asset.type)
        .header("cache-control", "no-cache")
        .header("etag", asset.etag)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer");
      if (asset.type.startsWith("text/html"))
        reply.header("content-security-policy", CSP).header("x-frame-options", "DENY");
      if (req.headers["if-none-match"] === asset.etag) return reply.status(304).send();
      return reply.send(asset.body);
    });
  }
};
