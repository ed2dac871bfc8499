/** How long a loop must have failed, every try, before `/healthz` answers 503. */
export const HEALTH_FAILING_MS = 5_000;

/**
 * What this process's background loops say about themselves, for `/healthz`: a loop whose every
 * try has failed for a while (the dispatcher's claims, say, while another process holds SQLite's
 * write lock or PostgreSQL takes no writes), or whose one try has had no answer for as long (a
 * lock held on the table it writes), makes the process unhealthy, though a read from the database
 * still works. One success clears it.
 */
export class Health {
  private readonly failing = new Map<string, { since: number; error: string }>();
  /** The try of each part that is waiting for its answer, since when. */
  private readonly waiting = new Map<string, number>();

  constructor(private readonly now: () => number = Date.now) {}

  /** `part` failed; unhealthy once it has failed without a success for `HEALTH_FAILING_MS`. */
  failed(part: string, err: unknown): void {
    const error = err instanceof Error ? err.message : String(err);
    const known = this.failing.get(part);
    if (known) known.error = error;
    else this.failing.set(part, { since: this.now(), error });
  }

  succeeded(part: string): void {
    if (this.failing.size > 0) this.failing.delete(part);
  }

  /** `part` starts a try; call what this returns when it has ended, either way. */
  begin(part: string): () => void {
    const since = this.now();
    this.waiting.set(part, since);
    return () => {
      if (this.waiting.get(part) === since) this.waiting.delete(part);
    };
  }

  /**
   * The part failing, or waiting for an answer, the longest, when for at least `forMs`; `waiting`
   * says which of the two.
   */
  problem(
    forMs = HEALTH_FAILING_MS,
  ): { part: string; forMs: number; error: string; waiting: boolean } | undefined {
    const now = this.now();
    let worst: { part: string; forMs: number; error: string; waiting: boolean } | undefined;
    for (const [part, f] of this.failing) {
      const age = now - f.since;
      if (age >= forMs && (!worst || age > worst.forMs))
        worst = { part, forMs: age, error: f.error, waiting: false };
    }
    for (const [part, since] of this.waiting) {
      const age = now - since;
      if (age >= forMs && (!worst || age > worst.forMs))
        worst = { part, forMs: age, error: "no answer from the database", waiting: true };
    }
    return worst;
  }
}
