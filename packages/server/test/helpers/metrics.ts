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
