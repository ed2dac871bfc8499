/**
 * SQLite shared by several processes (split roles, the CLI): a transaction that read before
 * another process committed a write cannot then write itself, and SQLite answers
 * SQLITE_BUSY_SNAPSHOT at once (waiting cannot help, so busy_timeout does not apply); a read
 * transaction upgrading to write beside another writer may get SQLITE_BUSY without waiting, to
 * avoid a deadlock. Nothing of it was committed, so it is simply run again, a few times.
 */
export async function retryStaleSnapshot<T>(run: () => Promise<T>, tries = 10): Promise<T> {
  for (let i = 1; ; i++) {
    try {
      return await run();
    } catch (err) {
      if (i >= tries || !/^SQLITE_BUSY/.test(String((err as { code?: unknown } | null)?.code))) throw err;
      // The other process holds the write lock for the rest of its transaction: back off a little.
      await new Promise((r) => setTimeout(r, 2 ** i + Math.random() * 10));
    }
  }
}
