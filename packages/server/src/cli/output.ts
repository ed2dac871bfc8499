/**
 * Where the client commands write. Results go to stdout (one JSON document, or JSON lines for the
 * streaming commands, with `--json`); progress goes to stderr and only on a terminal, so scripts
 * and pipes see results only. Colour only on a terminal, never with NO_COLOR set (no-color.org).
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

// C0 and C1 control characters but tab and newline, and the colour codes `paint` writes.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching them is the point
const CONTROL = /\x1b\[\d+m|[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/**
 * Text as it may reach a terminal: control characters that came with API data (an endpoint's
 * description, a response body) are shown escaped (`\u001b`), so they cannot clear the screen,
 * set the clipboard or fake a status line. Only the colour codes of `paint` pass, and only when
 * colour is on.
 */
export function printable(text: string, color: boolean): string {
  return text.replace(CONTROL, (m) =>
    m.length > 1 && color ? m : `\\u${m.charCodeAt(0).toString(16).padStart(4, "0")}${m.slice(1)}`,
  );
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
  const color = !json && stdout.isTTY === true && env.NO_COLOR === undefined && env.TERM !== "dumb";
  const paint = (code: number, reset: number) => (s: string) =>
    color ? `\x1b[${code}m${s}\x1b[${reset}m` : s;
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
      if (stderr.isTTY) stderr.write(`${paint(2, 22)(printable(text, false))}\n`);
    },
    warn(text) {
      stderr.write(`${printable(text, color)}\n`);
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
