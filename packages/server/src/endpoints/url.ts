import { classifyAddress, isLiteralIp } from "../delivery/address.js";
import { badRequest } from "../errors.js";

/**
 * Checks an endpoint URL when it is created or changed (PRODUCT.md §11). Outside dev mode the URL
 * must be https and a literal non-global IP is refused here; a host name is resolved and checked
 * at connect time instead (so DNS rebinding cannot get past it).
 */
export function checkEndpointUrl(text: string, dev: boolean): string {
  // "example.com/hook" is no URL, and "localhost:3000/hook" parses with "localhost:" as its
  // scheme: a host (and port) without a scheme is told what is missing ("mailto:x" is not).
  const noScheme = () =>
    badRequest(
      "url",
      `"url" has no scheme: begin it with https:// (or http:// in dev mode), e.g. https://${text.slice(0, 200)}`,
      "invalid_url",
    );
  const hostFirst = /^[a-z0-9-]+(\.[a-z0-9-]+)*(:\d+)?(\/|$)/i.test(text);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    if (hostFirst) throw noScheme();
    throw badRequest("url", `"url" is not a valid URL (e.g. https://example.com/webhooks)`, "invalid_url");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    if (hostFirst) throw noScheme();
    throw badRequest(
      "url",
      `"url" must be http(s), not ${url.protocol}; begin it with https:// (or http:// in dev mode)`,
      "invalid_url",
    );
  }
  if (url.username || url.password)
    throw badRequest("url", `"url" must not carry credentials; use headers`, "invalid_url");
  if (url.hash) throw badRequest("url", `"url" must not have a #fragment`, "invalid_url");
  if (!dev) {
    if (url.protocol !== "https:") {
      throw badRequest(
        "url",
        `"url" must use https:// (http:// is allowed only with KLEN_DEV=1)`,
        "invalid_url",
      );
    }
    if (isLiteralIp(url.hostname)) {
      const cls = classifyAddress(url.hostname);
      if (cls !== "global") {
        throw badRequest(
          "url",
          `"url" points at a ${cls} address, which is not allowed (it is only with KLEN_DEV=1, for local development)`,
          "blocked_address",
        );
      }
    }
  }
  return url.toString();
}
