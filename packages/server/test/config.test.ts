import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { test } from "node:test";
import { ConfigError, loadConfig, withoutPassword } from "../src/config.js";

test("defaults follow PRODUCT.md §12", () => {
  const c = loadConfig({ KLEN_DATA_DIR: "/tmp/klen-x" });
  assert.equal(c.port, 8080);
  assert.equal(c.host, "127.0.0.1");
  assert.equal(c.databaseUrl, "sqlite:/tmp/klen-x/klen.db");
  assert.equal(c.publicUrl, "http://localhost:8080");
  assert.equal(c.deliveryTimeoutMs, 15_000);
  assert.equal(c.leaseMs, 45_000);
  assert.equal(c.databaseTimeoutMs, 20_000);
  assert.equal(c.disableAfterMs, 5 * 86_400_000);
  assert.equal(c.inlineLimit, 65_536);
  assert.equal(c.urlTtlMs, 7 * 86_400_000);
  assert.equal(c.retentionMs, 30 * 86_400_000);
  assert.equal(c.maxBody, 1_048_576);
  assert.equal(c.maxRecording, 200 * 1_048_576);
  assert.equal(c.blobStore, "local");
  assert.equal(loadConfig({ KLEN_BLOB_STORE: "database" }).blobStore, "database");
  assert.equal(c.rateLimit, 0);
  assert.equal(c.dev, false);
  assert.equal(c.summary, undefined);
  // Its own thread for sending wherever there is a second core to run it on.
  assert.equal(c.senderThread, availableParallelism() > 1);
});

test("a bad KLEN_DATABASE_URL is named, and its password never printed", () => {
  for (const url of [
    "mysql://klen:S3cretPw!x@127.0.0.1/klen",
    "postgres://klen:S3cretPw!x@127.0.0.1:notaport/klen",
    "postgres://klen:S3cretPw!x@[::1:5432/klen",
  ]) {
    assert.throws(
      () => loadConfig({ KLEN_DATABASE_URL: url }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.variable === "KLEN_DATABASE_URL" &&
        !err.message.includes("S3cretPw") &&
        err.message.includes("klen:***@"),
      url,
    );
  }
  assert.equal(withoutPassword("postgres://u:p@w@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
  assert.equal(withoutPassword("postgres://u@h/db"), "postgres://u@h/db");
  // An unencoded # / ? in the password (an invalid URL, so printed in the error), and a password
  // given as a query parameter, which pg also reads.
  for (const [url, shown] of [
    ["postgres://u:se#cretPW@h:5432/db", "postgres://u:***@h:5432/db"],
    ["postgres://u:se/cretPW@h:5432/db", "postgres://u:***@h:5432/db"],
    ["postgres://u:se?cretPW@h:5432/db", "postgres://u:***@h:5432/db"],
    ["postgres://u@h/db?password=cretPW&sslmode=disable", "postgres://u@h/db?password=***&sslmode=disable"],
    [
      "postgres://u@h/db?sslmode=disable&sslpassword=cretPW",
      "postgres://u@h/db?sslmode=disable&sslpassword=***",
    ],
    // A query password with an unencoded # (the rest of it reads as a fragment).
    ["postgres://u@h/db?password=se#cretPW", "postgres://u@h/db?password=***#***"],
    // A password of digits and a / ? or #: a valid URL with a port and a path, the @ in the path.
    ["postgres://klen:2024/Spring!@localhost:5432/klen", "postgres://klen:***@localhost:5432/klen"],
    ["postgres://klen:77?x=y@localhost/klen", "postgres://klen:***@localhost/klen"],
    ["postgres://klen:8080#tail@localhost/klen", "postgres://klen:***@localhost/klen"],
    // So an @ the parser does not read as the user info's end is taken for it (too much hidden,
    // never too little).
    ["postgres://h:5432/db?application_name=a@b", "postgres://h:***@b"],
    ["postgres://h:5432/db?application_name=ab", "postgres://h:5432/db?application_name=ab"],
  ])
    assert.equal(withoutPassword(url!), shown);
  assert.throws(
    () => loadConfig({ KLEN_DATABASE_URL: "postgres://klen:se#cretPW@127.0.0.1:9/klen" }),
    (err: unknown) =>
      err instanceof ConfigError && !err.message.includes("cretPW") && /percent-encode/.test(err.message),
  );
  assert.equal(withoutPassword("sqlite:./data/klen.db"), "sqlite:./data/klen.db");
});

test("KLEN_SUMMARY_URL with credentials or not http(s) is refused without quoting it", () => {
  const model = { KLEN_SUMMARY_MODEL: "m" };
  for (const [url, why] of [
    ["http://bob:sk-LEAKME123@127.0.0.1:9/v1", /credentials.*KLEN_SUMMARY_API_KEY/],
    ["https://sk-LEAKME123@api.example/v1", /credentials/],
    ["ftp://sk-LEAKME123.example/v1", /http\(s\)/],
    ["sk-LEAKME123", /not a URL/],
  ] as const) {
    assert.throws(
      () => loadConfig({ ...model, KLEN_SUMMARY_URL: url }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.variable === "KLEN_SUMMARY_URL" &&
        why.test(err.message) &&
        !err.message.includes("LEAKME"),
      url,
    );
  }
  assert.equal(
    loadConfig({ ...model, KLEN_SUMMARY_URL: "https://api.example/v1" }).summary?.url,
    "https://api.example/v1",
  );
});

test("a bad value stops start-up with a message naming the variable", () => {
  const bad: Record<string, string> = {
    PORT: "eighty",
    KLEN_DELIVERY_TIMEOUT: "soon",
    KLEN_RETRY_SCHEDULE: "5s,often",
    KLEN_INLINE_LIMIT: "big",
    KLEN_DATABASE_URL: "mysql://x",
    KLEN_DEV: "maybe",
    KLEN_RATE_LIMIT: "-3",
    KLEN_SENDER_THREAD: "sometimes",
    KLEN_RECOVER_BATCH: "20000",
    KLEN_HOST: "not_a_host!",
    KLEN_BLOB_STORE: "s3",
    LOG_LEVEL: "loud",
  };
  // A number without its unit (15000 read as seconds was over 4 hours), and zero where it would
  // expire every URL, purge everything or refuse every request at once.
  const unclear: Array<[string, string]> = [
    ["KLEN_DELIVERY_TIMEOUT", "15000"],
    ["KLEN_RETRY_SCHEDULE", "5,300"],
    ["KLEN_URL_TTL", "0"],
    ["KLEN_DATABASE_TIMEOUT", "0"],
    ["KLEN_RETENTION", "0s"],
    ["KLEN_DISABLE_AFTER", "0"],
    ["KLEN_MAX_BODY", "0"],
    ["KLEN_MAX_RECORDING", "0MiB"],
  ];
  for (const [name, value] of unclear) {
    assert.throws(
      () => loadConfig({ [name]: value }),
      (err: unknown) =>
        err instanceof ConfigError && err.variable === name && /needs a unit|more than 0/.test(err.message),
      `${name}=${value}`,
    );
  }
  assert.deepEqual(loadConfig({ KLEN_RETRY_SCHEDULE: "0,5s" }).retrySchedule, [0, 5000], "0 needs no unit");
  for (const [name, value] of Object.entries(bad)) {
    assert.throws(
      () => loadConfig({ [name]: value }),
      (err: unknown) =>
        err instanceof ConfigError && err.variable === name && err.message.startsWith(`${name}:`),
      name,
    );
  }
  // What Number() reads but is not a count of requests.
  for (const value of ["0x10", "1e3", "2.5"])
    assert.throws(() => loadConfig({ KLEN_RATE_LIMIT: value }), /KLEN_RATE_LIMIT: not a whole number/, value);
  assert.equal(loadConfig({ KLEN_RATE_LIMIT: "20" }).rateLimit, 20);
  // A model or key without the URL would be ignored: the built-in summarizer would run instead.
  for (const env of [{ KLEN_SUMMARY_MODEL: "m" }, { KLEN_SUMMARY_API_KEY: "sk-1" }])
    assert.throws(
      () => loadConfig(env),
      (err: unknown) => err instanceof ConfigError && err.variable === "KLEN_SUMMARY_URL",
      JSON.stringify(env),
    );
});

test("durations that run as timers stop below Node's timer limit; the others at 100 years", () => {
  const dataDir = { KLEN_DATA_DIR: "./data" };
  for (const [name, value] of [
    ["KLEN_DELIVERY_TIMEOUT", "25d"],
    ["KLEN_LEASE", "30d"],
    ["KLEN_DATABASE_TIMEOUT", "25d"],
    ["KLEN_TEST_CALL_SUMMARY_WAIT", "25d"],
    ["KLEN_URL_TTL", "99999999999d"],
    ["KLEN_RETENTION", "36501d"],
    ["KLEN_RETRY_SCHEDULE", "5s,36501d"],
  ] as const)
    assert.throws(
      () => loadConfig({ ...dataDir, [name]: value }),
      (err: unknown) => err instanceof ConfigError && err.variable === name && /at most/.test(err.message),
      `${name}=${value}`,
    );
  const c = loadConfig({ ...dataDir, KLEN_DELIVERY_TIMEOUT: "24d", KLEN_URL_TTL: "36500d" });
  assert.equal(c.deliveryTimeoutMs, 24 * 86_400_000);
  assert.equal(c.urlTtlMs, 36_500 * 86_400_000);
});

test("KLEN_HOST takes IP addresses and host names", () => {
  for (const h of ["127.0.0.1", "::1", "0.0.0.0", "localhost", "api.internal", "host-1.example.com"]) {
    assert.equal(loadConfig({ KLEN_HOST: h }).host, h);
  }
  for (const h of ["-lead.example", "a..b", "bad host", "x_y"]) {
    assert.throws(
      () => loadConfig({ KLEN_HOST: h }),
      /^Error: KLEN_HOST: |KLEN_HOST: not an IP address or host name/,
    );
  }
});

test("dev mode, PostgreSQL URLs, an explicit schedule and the sender thread setting are read", () => {
  const c = loadConfig({
    KLEN_DEV: "true",
    KLEN_DATABASE_URL: "postgresql://u@127.0.0.1/db",
    KLEN_RETRY_SCHEDULE: "1s,2s",
    KLEN_SENDER_THREAD: "off",
  });
  assert.equal(c.senderThread, false);
  assert.equal(loadConfig({ KLEN_SENDER_THREAD: "1" }).senderThread, true);
  assert.equal(c.dev, true);
  assert.equal(c.databaseUrl, "postgresql://u@127.0.0.1/db");
  assert.deepEqual(c.retrySchedule, [1000, 2000]);
});

test("KLEN_API_KEY must be one run of visible ASCII, and a refusal does not quote it", () => {
  for (const key of [
    "has SECRET space",
    "SECRETkey\n",
    " SECRETkey",
    "SECRET\tkey",
    "clé-SECRET-0123456789",
  ]) {
    assert.throws(
      () => loadConfig({ KLEN_API_KEY: key }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.variable === "KLEN_API_KEY" &&
        /visible ASCII/.test(err.message) &&
        !err.message.includes("SECRET"),
      JSON.stringify(key),
    );
  }
  assert.equal(loadConfig({ KLEN_API_KEY: "klen_sk_A-b.c~0123456789" }).apiKey, "klen_sk_A-b.c~0123456789");
  assert.equal(loadConfig({ KLEN_API_KEY: "" }).apiKey, undefined);
});

test("KLEN_PUBLIC_URL must be an http(s) URL that a path can follow", () => {
  for (const url of [
    "http://exa mple.com",
    "http://x?y",
    "https://klen.example/#top",
    "ftp://klen.example",
    "klen.example",
    "https://user:pw@klen.example",
  ]) {
    assert.throws(
      () => loadConfig({ KLEN_PUBLIC_URL: url }),
      (err: unknown) =>
        err instanceof ConfigError && err.variable === "KLEN_PUBLIC_URL" && !err.message.includes("pw@"),
      url,
    );
  }
  assert.equal(
    loadConfig({ KLEN_PUBLIC_URL: "https://hooks.example.com/klen/" }).publicUrl,
    "https://hooks.example.com/klen",
  );
  assert.equal(loadConfig({ KLEN_PUBLIC_URL: "http://[::1]:8080" }).publicUrl, "http://[::1]:8080");
});
