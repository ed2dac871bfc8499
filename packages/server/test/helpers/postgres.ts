import { execFile, execFileSync, spawn, spawnSync } from "node:child_process";
import {
  chownSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { freePort } from "./server.js";

const run = promisify(execFile);

/**
 * A PostgreSQL server for tests. Without `KLEN_TEST_DATABASE_URL` it is a throwaway server this
 * test process started itself (initdb into a temp folder, ~1 s on the CI machine), listening on
 * 127.0.0.1 and a unix socket in that folder only, stopped when the process ends. Node's runner
 * puts every test file in its own process, so one server per file keeps files independent with
 * no cross-process coordination; every test takes its own database from `freshDatabase()`.
 */
export interface PgServer {
  /** Connection URL of the maintenance database (superuser). */
  adminUrl: string;
  /** True when this process started the server (so `restart` and `stop` are possible). */
  owned: boolean;
  /** A new empty database; `drop()` removes it even while clients are still connected. */
  freshDatabase(): Promise<{ url: string; drop(): Promise<void> }>;
  /** Restarts the server (`fast` or `immediate`, as `pg_ctl restart -m`); same port and data. */
  restart(mode?: "fast" | "immediate"): Promise<void>;
  /** Stops the server but keeps its data (an outage), until `up()`. */
  down(mode?: "fast" | "immediate"): Promise<void>;
  /** Starts a server stopped by `down()` again, on the same port. */
  up(): Promise<void>;
  /**
   * Freezes the server and every backend (SIGSTOP) until `thaw()`: connections stay open, nothing
   * answers — a hung host or a network partition, as seen from the client.
   */
  freeze(): void;
  thaw(): void;
  /** Stops an owned server and removes its folder; a no-op for an external one. */
  stop(): Promise<void>;
}

/** The newest installed PostgreSQL's bin folder (Debian layout), or the one on PATH. */
function binDir(): string {
  const root = "/usr/lib/postgresql";
  if (existsSync(root)) {
    const versions = readdirSync(root)
      .filter((v) => existsSync(join(root, v, "bin", "initdb")))
      .sort((a, b) => Number(b) - Number(a));
    if (versions[0]) return join(root, versions[0], "bin");
  }
  try {
    return execFileSync("pg_config", ["--bindir"], { encoding: "utf8" }).trim();
  } catch {
    throw new Error(
      "PostgreSQL tests need either KLEN_TEST_DATABASE_URL or a local PostgreSQL installation (initdb): " +
        "apt-get install postgresql",
    );
  }
}

/** PostgreSQL refuses to run as root, so as root every server command runs as `postgres`. */
function asServerUser(cmd: string, args: string[]): [string, string[]] {
  if (process.getuid?.() !== 0) return [cmd, args];
  return ["runuser", ["-u", "postgres", "--", cmd, ...args]];
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

let counter = 0;

function databaseFactory(adminUrl: string, prefix: string) {
  return async (): Promise<{ url: string; drop(): Promise<void> }> => {
    const name = `${prefix}_${process.pid}_${++counter}_${Math.random().toString(36).slice(2, 8)}`;
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${quoteIdent(name)}`);
    } finally {
      await admin.end();
    }
    const url = new URL(adminUrl);
    url.pathname = `/${name}`;
    return {
      url: url.toString(),
      async drop() {
        const c = new pg.Client({ connectionString: adminUrl });
        await c.connect();
        try {
          await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`);
        } finally {
          await c.end();
        }
      },
    };
  };
}

function external(url: string): PgServer {
  return {
    adminUrl: url,
    owned: false,
    freshDatabase: databaseFactory(url, "klen_test"),
    async restart() {
      throw new Error(
        "cannot restart an external PostgreSQL (KLEN_TEST_DATABASE_URL); this test needs initdb",
      );
    },
    async down() {
      throw new Error("cannot stop an external PostgreSQL (KLEN_TEST_DATABASE_URL); this test needs initdb");
    },
    async up() {},
    freeze() {
      throw new Error(
        "cannot freeze an external PostgreSQL (KLEN_TEST_DATABASE_URL); this test needs initdb",
      );
    },
    thaw() {},
    async stop() {},
  };
}

/** Starts a throwaway server of this process: temp folder owned by `postgres`, free port, fast settings. */
async function throwaway(): Promise<PgServer> {
  const bin = binDir();
  const dir = mkdtempSync(join(tmpdir(), "klen-pg-"));
  const data = join(dir, "data");
  const log = join(dir, "server.log");
  if (process.getuid?.() === 0) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    chownSync(dir, uid, gid);
  }
  const pgCtl = (...args: string[]) => asServerUser(join(bin, "pg_ctl"), ["-D", data, "-l", log, ...args]);
  const [initCmd, initArgs] = asServerUser(join(bin, "initdb"), [
    "-D",
    data,
    "-A",
    "trust",
    "-U",
    "postgres",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
  ]);
  await run(initCmd, initArgs);

  let port = 0;
  for (let tries = 0; ; tries++) {
    port = await freePort();
    // fsync off: the tests survive process crashes and `pg_ctl restart -m immediate`, which keep
    // the OS page cache; only a machine crash would need fsync. Commits stay synchronous so an
    // immediate restart loses nothing a client was told was committed.
    const conf = [
      `port = ${port}`,
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${dir}'`,
      "fsync = off",
      "full_page_writes = off",
      "max_connections = 300",
      "shared_buffers = 64MB",
      "log_min_messages = warning",
    ].join("\n");
    writeFileSync(join(data, "postgresql.auto.conf"), `${conf}\n`);
    const [cmd, args] = pgCtl("-w", "-t", "30", "start");
    try {
      await run(cmd, args);
      break;
    } catch (err) {
      // Another process took the port between freePort() and the bind: try another one.
      if (tries >= 3) throw new Error(`PostgreSQL did not start: ${(err as Error).message}`);
    }
  }

  // If this process dies without stopping the server (SIGKILL, a runner timeout), a detached
  // watchdog stops it and removes the folder, so no stray server outlives the test run.
  const [stopCmd, stopArgs] = pgCtl("-m", "immediate", "-w", "stop");
  const script = `while kill -0 ${process.pid} 2>/dev/null && [ -d '${data}' ]; do sleep 1; done; ${[stopCmd, ...stopArgs].map((a) => `'${a}'`).join(" ")} >/dev/null 2>&1; rm -rf '${dir}'`;
  const watchdog = spawn("sh", ["-c", script], { detached: true, stdio: "ignore" });
  watchdog.unref();

  let stopped = false;
  const stopNow = () => {
    if (stopped) return;
    stopped = true;
    spawnSync(stopCmd, stopArgs, { stdio: "ignore" });
    rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", stopNow);

  const adminUrl = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    adminUrl,
    owned: true,
    freshDatabase: databaseFactory(adminUrl, "klen"),
    async restart(mode = "fast") {
      const [cmd, args] = pgCtl("-m", mode, "-w", "-t", "30", "restart");
      await run(cmd, args);
    },
    async down(mode = "fast") {
      const [cmd, args] = pgCtl("-m", mode, "-w", "-t", "30", "stop");
      await run(cmd, args);
    },
    async up() {
      const [cmd, args] = pgCtl("-w", "-t", "30", "start");
      await run(cmd, args);
    },
    freeze() {
      signalServer(data, "SIGSTOP");
    },
    thaw() {
      signalServer(data, "SIGCONT");
    },
    async stop() {
      process.off("exit", stopNow);
      if (stopped) return;
      stopped = true;
      await run(stopCmd, stopArgs).catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Sends `signal` to the postmaster of the cluster in `data` and to every process it started. */
function signalServer(data: string, signal: NodeJS.Signals): void {
  const postmaster = Number(readFileSync(join(data, "postmaster.pid"), "utf8").split("\n")[0]);
  const children = execFileSync("ps", ["--ppid", String(postmaster), "-o", "pid="], { encoding: "utf8" })
    .split("\n")
    .map((l) => Number(l.trim()))
    .filter((pid) => pid > 0);
  for (const pid of [...children, postmaster]) process.kill(pid, signal);
}

let shared: Promise<PgServer> | undefined;

/**
 * The PostgreSQL server of this test process: `KLEN_TEST_DATABASE_URL` when given, else a
 * throwaway server started on first use. With `{ own: true }` a separate throwaway server is
 * started regardless (for tests that restart the server).
 */
export function startPostgres(opts: { own?: boolean } = {}): Promise<PgServer> {
  if (opts.own) return throwaway();
  if (!shared) {
    const url = process.env.KLEN_TEST_DATABASE_URL;
    shared = url ? Promise.resolve(external(url)) : throwaway();
    // A failed start is not cached, so the next caller sees the real error again.
    shared.catch(() => {
      shared = undefined;
    });
  }
  return shared;
}

/** Stops this process's shared server, if one was started (also happens at process exit). */
export async function stopPostgres(): Promise<void> {
  const s = shared;
  shared = undefined;
  if (s) await (await s).stop();
}
