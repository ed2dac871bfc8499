import { randomBytes } from "node:crypto";

/**
 * Where the client commands write. Results go to stdout (one JSON document, or JSON lines for the
 * streaming commands, with `--json`); progress goes to stderr and only on a terminal and without
 * `--json`, so scripts and pipes see results only. Colour only on a terminal (each stream by its
 * own), never with NO_COLOR set (no-color.org).
 */
export interface Output {
  json: boolean;
  color: boolean;
  /** A line of human-readable result (suppressed with --json). */
  line(text: string): void;
  /** A JSON value as one line on stdout. */
  data(value: unknown): void;
  /** Transient progress on stderr, terminal only. */
  progress(text: string): void;
  /** A warning or error line on stderr, always. */
  warn(text: string): void;
  green(s: string): string;
  red(s: string): string;
  yellow(s: string): string;
  dim(s: string): string;
  bold(s: string): string;
}

// C0 and C1 control characters but tab (ESC, newline and carriage return included), the
// bidirectional overrides that make text read differently from how it is stored, and the two
// private-use characters of the CLI's own colour marks (below), so API text cannot forge one.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\uE000\uE001]/g;

/**
 * The CLI's own colours travel through its text as marks (private-use characters around a nonce of
 * this process and the SGR code) and become escape sequences only as a line is written, after
 * everything else in it was escaped: so an escape sequence inside API data (an endpoint's
 * description, a receiver's response body) never reaches the terminal as one, colour code or not,
 * and API text cannot forge a mark, not knowing the nonce (its mark characters are escaped).
 */
const NONCE = randomBytes(6).toString("hex");
const MARK = new RegExp(`\uE000${NONCE}(\\d{1,2})\uE001`);
const PAINT_CODES = new Set(["1", "2", "22", "31", "32", "33", "39"]);

/**
 * Text as it may reach a terminal: control characters that came with API data are shown escaped
 * (`\u001b`, `\u000a`), so they cannot clear the screen, set the clipboard, conceal what follows or
 * fake a line. The marks of `paint` become colour codes when `color` is on and vanish otherwise.
 */
export function printable(text: string, color: boolean): string {
  // Split on the marks (odd parts are their codes); the text between them is escaped.
  const parts = text.split(MARK);
  let out = "";
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (i % 2 === 0)
      out += part.replace(CONTROL, (m) => `\\u${m.charCodeAt(0).toString(16).padStart(4, "0")}`);
    else if (color && PAINT_CODES.has(part)) out += `\x1b[${part}m`;
  }
  return out;
}

/** Colour unless NO_COLOR is set to something (no-color.org: an empty value does not count) or TERM=dumb. */
function colorOn(stream: NodeJS.WriteStream, env: NodeJS.ProcessEnv): boolean {
  return stream.isTTY === true && !env.NO_COLOR && env.TERM !== "dumb";
}

export function createOutput(opts: {
  json?: boolean;
  stdout?: NodeJS.WriteStream;
  stderr?: NodeJS.WriteStream;
  env?: NodeJS.ProcessEnv;
}): Output {
  const stdout = opts.stdout ?? process.stdout;
  const stderr = opts.stderr ?? process.stderr;
  const env = opts.env ?? process.env;
  const json = opts.json === true;
  // Each stream by its own terminal: `2>errors.log` gets no escape codes while stdout is coloured.
  const color = !json && colorOn(stdout, env);
  const errColor = !json && colorOn(stderr, env);
  const paint = (code: number, reset: number) => (s: string) =>
    color || errColor ? `\uE000${NONCE}${code}\uE001${s}\uE000${NONCE}${reset}\uE001` : s;
  return {
    json,
    color,
    line(text) {
      if (!json) stdout.write(`${printable(text, color)}\n`);
    },
    data(value) {
      stdout.write(`${JSON.stringify(value)}\n`);
    },
    progress(text) {
      if (!json && stderr.isTTY) stderr.write(`${printable(paint(2, 22)(text), errColor)}\n`);
    },
    warn(text) {
      stderr.write(`${printable(text, errColor)}\n`);
    },
    green: paint(32, 39),
    red: paint(31, 39),
    yellow: paint(33, 39),
    dim: paint(2, 22),
    bold: paint(1, 22),
  };
}

/** Colours an HTTP status or outcome: 2xx green, anything else red. */
export function statusText(out: Output, status: number | null | undefined, error?: string | null): string {
  if (status != null && status >= 200 && status < 300) return out.green(String(status));
  if (status != null) return out.red(String(status));
  return out.red(error ?? "error");
}
