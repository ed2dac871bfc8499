/**
 * Runs `work` while keeping a lease: every third of `leaseMs`, `renew()` writes the next lease,
 * fenced on the last one it wrote. It answers false (or throws) once another process has taken
 * the lease over; renewing then stops, and the work's own fenced writes find out. Renewals run one
 * at a time, and the last has finished when this returns. Used where one step can outlast the
 * lease (a summarizer call): a test-call run waiting for its summary, a summary job.
 */
export async function whileRenewing<T>(
  leaseMs: number,
  renew: () => Promise<boolean>,
  work: () => Promise<T>,
): Promise<T> {
  let beat: Promise<unknown> = Promise.resolve();
  const heartbeat = setInterval(
    () => {
      beat = beat
        .then(async () => {
          if (!(await renew())) clearInterval(heartbeat);
        })
        .catch(() => clearInterval(heartbeat));
    },
    Math.max(1, Math.floor(leaseMs / 3)),
  );
  try {
    return await work();
  } finally {
    clearInterval(heartbeat);
    await beat;
  }
}
