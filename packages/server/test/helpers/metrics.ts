/** Delivery attempts a process counted (every outcome of `klen_delivery_attempts_total`), from its /metrics text. */
export function attemptsIn(metrics: string): number {
  let n = 0;
  for (const line of metrics.split("\n")) {
    if (line.startsWith("klen_delivery_attempts_total")) n += Number(line.split(" ").pop());
  }
  return n;
}

/** The same, read from the /metrics of a process on a loopback port (a worker's KLEN_WORKER_PORT). */
export async function attemptsAt(port: number): Promise<number> {
  return attemptsIn(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text());
}

/** One series' value in /metrics text (0 when absent): `name` with exactly these labels. */
export function seriesValue(metrics: string, name: string, labels: Record<string, string>): number {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort()
    .join(",");
  for (const line of metrics.split("\n")) {
    const m = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = (m[2] ?? "").split(",").filter(Boolean).sort().join(",");
    if (got === want) return Number(m[3]);
  }
  return 0;
}
