import { isIP } from "node:net";

/**
 * Classifies an IP address for SSRF protection (PRODUCT.md §11). Pure, so every range is unit
 * tested without connecting anywhere. Anything that is not plainly a global unicast address is
 * refused: loopback, private, shared (CGNAT), link-local (incl. cloud metadata 169.254.169.254),
 * multicast, reserved, documentation, benchmarking, and IPv6 forms that embed such an IPv4
 * address (mapped, translated, 6to4).
 */
export type AddressClass =
  | "global"
  | "loopback"
  | "private"
  | "link-local"
  | "metadata"
  | "multicast"
  | "unspecified"
  | "reserved"
  | "invalid";

type V4Range = [base: number, bits: number, cls: AddressClass];

const v4 = (a: number, b: number, c: number, d: number) => ((a << 24) | (b << 16) | (c << 8) | d) >>> 0;

// Order matters: the first match wins (metadata before link-local).
const V4_RANGES: V4Range[] = [
  [v4(169, 254, 169, 254), 32, "metadata"],
  [v4(0, 0, 0, 0), 8, "unspecified"],
  [v4(10, 0, 0, 0), 8, "private"],
  [v4(100, 64, 0, 0), 10, "private"], // shared address space (CGNAT)
  [v4(127, 0, 0, 0), 8, "loopback"],
  [v4(169, 254, 0, 0), 16, "link-local"],
  [v4(172, 16, 0, 0), 12, "private"],
  [v4(192, 0, 0, 0), 24, "reserved"], // IETF protocol assignments
  [v4(192, 0, 2, 0), 24, "reserved"], // TEST-NET-1
  [v4(192, 88, 99, 0), 24, "reserved"], // 6to4 relay anycast
  [v4(192, 168, 0, 0), 16, "private"],
  [v4(198, 18, 0, 0), 15, "reserved"], // benchmarking
  [v4(198, 51, 100, 0), 24, "reserved"], // TEST-NET-2
  [v4(203, 0, 113, 0), 24, "reserved"], // TEST-NET-3
  [v4(224, 0, 0, 0), 4, "multicast"],
  [v4(240, 0, 0, 0), 4, "reserved"], // incl. broadcast
];

function classifyV4Number(n: number): AddressClass {
  for (const [base, bits, cls] of V4_RANGES) {
    const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
    if ((n & mask) >>> 0 === base) return cls;
  }
  return "global";
}

function parseV4(text: string): number | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
    n = n * 256 + Number(p);
  }
  return n >>> 0;
}

/** Expands an IPv6 address (with an optional trailing dotted IPv4) to 8 16-bit groups. */
function parseV6(text: string): number[] | undefined {
  let t = text.toLowerCase().split("%")[0]!;
  const lastColon = t.lastIndexOf(":");
  const last = t.slice(lastColon + 1);
  if (last.includes(".")) {
    // Rewrite a trailing dotted IPv4 (::ffff:127.0.0.1) as its two hex groups.
    const n = parseV4(last);
    if (n === undefined) return undefined;
    t = `${t.slice(0, lastColon + 1)}${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const halves = t.split("::");
  if (halves.length > 2) return undefined;
  const parse = (s: string) =>
    s === ""
      ? []
      : s.split(":").map((g) => (/^[0-9a-f]{1,4}$/.test(g) ? Number.parseInt(g, 16) : Number.NaN));
  const head = parse(halves[0]!);
  const rest = halves.length === 2 ? parse(halves[1]!) : [];
  const fill = 8 - head.length - rest.length;
  if (halves.length === 1 && fill !== 0) return undefined;
  if (halves.length === 2 && fill < 1) return undefined;
  const groups = [...head, ...new Array<number>(halves.length === 2 ? fill : 0).fill(0), ...rest];
  if (groups.length !== 8 || groups.some((g) => Number.isNaN(g))) return undefined;
  return groups;
}

function classifyV6(g: number[]): AddressClass {
  const embedded = () => classifyV4Number(((g[6]! << 16) | g[7]!) >>> 0);
  const zeros = (from: number, to: number) => g.slice(from, to).every((x) => x === 0);
  if (zeros(0, 8)) return "unspecified";
  if (zeros(0, 7) && g[7] === 1) return "loopback";
  if (zeros(0, 5) && g[5] === 0xffff) return embedded(); // IPv4-mapped ::ffff:a.b.c.d
  if (zeros(0, 6)) return embedded() === "global" ? "reserved" : embedded(); // deprecated IPv4-compatible
  if (g[0] === 0x64 && g[1] === 0xff9b && zeros(2, 6)) return embedded(); // NAT64 64:ff9b::/96
  if (g[0] === 0x2002) return classifyV4Number(((g[1]! << 16) | g[2]!) >>> 0); // 6to4 embeds its IPv4
  const first = g[0]!;
  if ((first & 0xfe00) === 0xfc00) return "private"; // unique local fc00::/7
  if ((first & 0xffc0) === 0xfe80) return "link-local";
  if ((first & 0xffc0) === 0xfec0) return "private"; // deprecated site-local
  if ((first & 0xff00) === 0xff00) return "multicast";
  if (first === 0x2001 && g[1] === 0x0db8) return "reserved"; // documentation
  if (first === 0x3fff && g[1]! < 0x1000) return "reserved"; // documentation 3fff::/20 (RFC 9637)
  if (first === 0x2001 && g[1]! < 0x0200) return "reserved"; // Teredo, ORCHID, benchmarking…
  if (first === 0x0100 && zeros(1, 4)) return "reserved"; // discard-only
  if ((first & 0xe000) !== 0x2000) return "reserved"; // outside global unicast 2000::/3
  return "global";
}

/** Classifies a literal IPv4 or IPv6 address (brackets allowed); `invalid` for anything else. */
export function classifyAddress(address: string): AddressClass {
  const a = address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address;
  const kind = isIP(a.split("%")[0]!);
  if (kind === 4) {
    const n = parseV4(a);
    return n === undefined ? "invalid" : classifyV4Number(n);
  }
  if (kind === 6) {
    const g = parseV6(a);
    return g === undefined ? "invalid" : classifyV6(g);
  }
  return "invalid";
}

/** True when a host name in a URL is a literal IP address (after WHATWG normalisation). */
export function isLiteralIp(hostname: string): boolean {
  const h = hostname.startsWith("[") ? hostname.slice(1, -1) : hostname;
  return isIP(h) !== 0;
}
