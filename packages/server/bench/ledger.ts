import { withStore } from "./queue.js";
import { idHash, type PathDigest, xor48 } from "./receiver.js";

export interface LedgerCheck {
  ok: boolean;
  expected: number;
  received: number;
  /** Arrivals beyond the first of each webhook-id (allowed: at-least-once), reported for honesty. */
  duplicates: number;
  badSignatures: number;
  detail: string;
}

/**
 * The ledger: every delivery the database holds for the endpoints under test (their paths) must
 * have arrived at that endpoint's path, with a valid signature. Compared per path as the count of
 * distinct webhook-ids plus an order-free digest of the id set, so no list of a million ids has to
 * cross the IPC channel. `expectCount`, when given, is what the scenario put in (events × endpoints).
 */
export async function checkLedger(opts: {
  databaseUrl: string;
  paths: readonly string[];
  received: { paths: Record<string, PathDigest>; badSignatures: number };
  expectCount?: number;
}): Promise<LedgerCheck> {
  const wanted = new Set(opts.paths);
  const expected = new Map<string, { n: number; d: number }>();
  await withStore(opts.databaseUrl, async (store) => {
    const endpoints = await store.db.selectFrom("endpoints").select(["id", "url"]).execute();
    const pathOf = new Map(endpoints.map((e) => [e.id, new URL(e.url).pathname]));
    const rows = await store.db.selectFrom("deliveries").select(["event_id", "endpoint_id"]).execute();
    for (const r of rows) {
      const path = pathOf.get(r.endpoint_id);
      if (path === undefined || !wanted.has(path)) continue;
      let e = expected.get(path);
      if (!e) {
        e = { n: 0, d: 0 };
        expected.set(path, e);
      }
      e.n++;
      e.d = xor48(e.d, idHash(r.event_id));
    }
  });
  let exp = 0;
  let got = 0;
  let duplicates = 0;
  const bad: string[] = [];
  for (const path of wanted) {
    const e = expected.get(path) ?? { n: 0, d: 0 };
    const r = opts.received.paths[path] ?? { distinct: 0, total: 0, digest: "0" };
    exp += e.n;
    got += r.distinct;
    duplicates += r.total - r.distinct;
    if (e.n !== r.distinct || e.d.toString(16) !== r.digest) {
      bad.push(
        `${path}: expected ${e.n}, received ${r.distinct}${e.n === r.distinct ? " (different ids)" : ""}`,
      );
    }
  }
  if (opts.expectCount !== undefined && exp !== opts.expectCount) {
    bad.push(`database holds ${exp} deliveries for these endpoints, the scenario made ${opts.expectCount}`);
  }
  if (opts.received.badSignatures > 0) bad.push(`${opts.received.badSignatures} bad signatures`);
  const ok = bad.length === 0 && exp > 0;
  return {
    ok,
    expected: exp,
    received: got,
    duplicates,
    badSignatures: opts.received.badSignatures,
    detail: ok ? "" : bad.slice(0, 5).join("; "),
  };
}

/** One line for the printout. */
export function ledgerLine(l: LedgerCheck): string {
  const dup = l.duplicates > 0 ? `, ${l.duplicates} duplicate arrivals (same webhook-id)` : "";
  return l.ok
    ? `ledger OK: ${l.received}/${l.expected} webhook-ids at their endpoints, signatures valid${dup}`
    : `ledger FAILED (run void): ${l.received}/${l.expected} — ${l.detail}`;
}
