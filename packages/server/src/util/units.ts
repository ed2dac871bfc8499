/** Parses durations (`500ms`, `5s`, `5m`, `2h`, `7d`) and sizes (`64KiB`, `1MiB`, `100B`) used in configuration. */

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kib: 1024,
  mib: 1024 ** 2,
  gib: 1024 ** 3,
  kb: 1000,
  mb: 1000 ** 2,
};

/**
 * Milliseconds for a duration such as `15s`. A number needs its unit (`15000` could mean either
 * 15 s or 4 hours), except `0`. Throws on anything else.
 */
export function parseDuration(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$/i.exec(text);
  if (!m) throw new Error(`not a duration: "${text}" (use e.g. 500ms, 5s, 5m, 2h, 7d)`);
  if (m[2] === undefined && Number(m[1]) !== 0) {
    // Both readings, with what each comes to: a bare 15000 is most likely milliseconds, a bare 30
    // seconds, and "15000s" (over four hours) is no hint to give without saying so.
    const n = Number(m[1]);
    const reading = (unit: "ms" | "s", ms: number) =>
      `${m[1]}${unit}${exact(ms) && formatDuration(ms) !== `${m[1]}${unit}` ? ` = ${formatDuration(ms)}` : ""}`;
    throw new Error(
      `"${text.trim()}" needs a unit: ms, s, m, h or d (e.g. ${reading("ms", n)} or ${reading("s", n * 1000)})`,
    );
  }
  return Math.round(Number(m[1]) * DURATION_UNITS[(m[2] ?? "s").toLowerCase()]!);
}

/** Bytes for a size such as `64KiB` (KiB, MiB, GiB: 1024; kB, MB: 1000); a bare number is bytes. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib|kb|mb)?\s*$/i.exec(text);
  if (!m) throw new Error(`not a size: "${text}" (use e.g. 512B, 64KiB, 1MiB)`);
  return Math.round(Number(m[1]) * SIZE_UNITS[(m[2] ?? "b").toLowerCase()]!);
}

/** `5s,5m,30m` → `[5000, 300000, 1800000]`. */
export function parseSchedule(text: string): number[] {
  const parts = text
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
  return parts.map(parseDuration);
}

/** Whether formatDuration shows `ms` without rounding. */
const exact = (ms: number) => Number.isInteger(ms) && (ms < 1000 || ms % 1000 === 0);

/** `90061000` → `1d1h1m1s`, for banners and help. */
export function formatDuration(ms: number): string {
  if (ms === 0) return "0s";
  if (ms < 1000) return `${ms}ms`;
  let rest = Math.floor(ms / 1000);
  let out = "";
  for (const [unit, size] of [
    ["d", 86400],
    ["h", 3600],
    ["m", 60],
    ["s", 1],
  ] as const) {
    const n = Math.floor(rest / size);
    if (n > 0) out += `${n}${unit}`;
    rest -= n * size;
  }
  return out;
}
