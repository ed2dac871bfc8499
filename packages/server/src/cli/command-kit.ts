import { createInterface } from "node:readline/promises";
import { type Command, InvalidArgumentError, Option } from "commander";
import { ApiRequestError } from "./api-client.js";
import { createOutput, type Output, printable } from "./output.js";

/** What every command that talks to a server over its API shares (client-commands.ts, resources.ts). */
export interface ApiOpts {
  apiUrl: string;
  apiKey?: string;
  json?: boolean;
}

/** Plain decimal digits only: `Number` would also take "0x2", "1e0", "+2" and "" (0). */
export const wholeNumber =
  (name: string, min: number, max = Number.MAX_SAFE_INTEGER, what = "") =>
  (v: string) => {
    const n = /^\d+$/.test(v.trim()) ? Number(v.trim()) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max)
      throw new InvalidArgumentError(what || `${name} must be a whole number from ${min} to ${max}`);
    return n;
  };

/** An id of the API's own kind (`ep_…`, `evt_…`): the prefix and 26 letters and digits. */
export const prefixedId = (name: string, prefix: string) => (v: string) => {
  if (!new RegExp(`^${prefix}_[0-9a-z]{26}$`).test(v))
    throw new InvalidArgumentError(
      `${name} must be an id like ${prefix}_01j9z3…: ${prefix}_ and 26 letters and digits`,
    );
  return v;
};

export const positiveInt = (name: string) =>
  wholeNumber(name, 1, Number.MAX_SAFE_INTEGER, `${name} must be a positive integer`);

/** The options every API-client command shares: where the server is, the key, JSON output. */
export function withApiOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option("--api-url <url>", "base URL of the server's API")
        .env("KLEN_API_URL")
        .default("http://localhost:8080"),
    )
    .addOption(new Option("--api-key <key>", "the account's API key").env("KLEN_API_KEY"))
    .option("--json", "machine-readable output on stdout (no colour, no progress)");
}

/**
 * Runs a command body with its output (`--json` or a terminal's), turning API and usage errors
 * into one clear line and exit status 1.
 */
export function run<O extends ApiOpts>(
  body: (opts: O, out: Output, cmd: Command) => Promise<number | undefined>,
) {
  return async (...args: unknown[]) => {
    const cmd = args[args.length - 1] as Command;
    const opts = cmd.opts<O>();
    try {
      const code = await body(opts, createOutput({ json: opts.json }), cmd);
      process.exitCode = code ?? 0;
    } catch (err) {
      const field = err instanceof ApiRequestError && err.field ? ` (field: ${err.field})` : "";
      // An option's value found wrong once the command runs: a usage error like commander's own.
      const usage = err instanceof InvalidArgumentError;
      if (opts.json) {
        // Scripts read stdout: every failure is a JSON document there, not only the API's.
        const e =
          err instanceof ApiRequestError
            ? { code: err.code, message: err.message, status: err.status, field: err.field }
            : { code: usage ? "usage" : "cli_error", message: (err as Error).message, status: 0 };
        process.stdout.write(`${JSON.stringify({ error: e })}\n`);
      }
      if (usage) {
        process.stderr.write(`error: ${(err as Error).message}\n`);
        process.exitCode = 1;
        return;
      }
      // The message may quote a server's answer: escaped like any API data (output.ts).
      process.stderr.write(
        `${printable(`klen-webhooks ${commandPath(cmd)}: ${(err as Error).message}${field}`, false)}\n`,
      );
      process.exitCode = 1;
    }
  };
}

/** `deliveries list` for a subcommand, `trigger` for a command: its names below the program. */
function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(" ");
}

/** Options of a list that pages through the API, newest first, within a time range. */
export interface PageOpts {
  before?: string;
  after?: string;
  limit: number;
  cursor?: string;
}

/** `--before`, `--after`, `--limit` and `--cursor` of a list command (the API's own parameters). */
export function withPageOptions(cmd: Command, what: string): Command {
  return cmd
    .option("--before <time>", `only ${what} created before this ISO-8601 time (2026-11-24T18:00:00Z)`)
    .option("--after <time>", `only ${what} created at this ISO-8601 time or later`)
    .addOption(
      new Option("--limit <n>", "how many (1 to 100)")
        .argParser((v) => {
          const n = positiveInt("--limit")(v);
          if (n > 100)
            throw new InvalidArgumentError("--limit must be at most 100 (a page); page on with --cursor");
          return n;
        })
        .default(20),
    )
    .option(
      "--cursor <cursor>",
      "the next page: the cursor the previous page printed (with the same filters)",
    );
}

/** The query of a page: `limit`, `cursor`, `before`, `after`, then the command's own filters. */
export function pageQuery(
  o: PageOpts,
  filters: Record<string, string | number | undefined>,
): URLSearchParams {
  const q = new URLSearchParams({ limit: String(o.limit) });
  if (o.cursor) q.set("cursor", o.cursor);
  for (const [k, v] of Object.entries(filters)) if (v !== undefined && v !== "") q.set(k, String(v));
  if (o.before) q.set("before", o.before);
  if (o.after) q.set("after", o.after);
  return q;
}

/**
 * `confirmed`, and on a no says so: false when the command is to stop there (exit status 1,
 * nothing changed).
 */
export async function goAhead(
  out: Output,
  question: string,
  o: { yes?: boolean; json?: boolean },
): Promise<boolean> {
  if (await confirmed(question, o)) return true;
  out.line("cancelled: nothing changed");
  return false;
}

/** Whether `confirmed` would ask: on a terminal, without `--yes` or `--json`. */
export const willAsk = (o: { yes?: boolean; json?: boolean }): boolean =>
  !o.yes && !o.json && process.stdin.isTTY === true && process.stderr.isTTY === true;

/**
 * Asks on a terminal before something that cannot be undone (`endpoints delete`, `api-keys
 * revoke`), as the Stripe CLI does: true at once with `--yes`, with `--json`, or when stdin or
 * stderr is not a terminal (a script, a pipe), which decides for itself what it runs.
 */
export async function confirmed(question: string, o: { yes?: boolean; json?: boolean }): Promise<boolean> {
  if (!willAsk(o)) return true;
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(`${question} [y/N] `);
    return /^y(es)?$/i.test(answer.trim());
  } catch {
    // Ctrl-C or Ctrl-D at the question: a no.
    process.stderr.write("\n");
    return false;
  } finally {
    rl.close();
  }
}
