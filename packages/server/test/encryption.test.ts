import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { Webhook } from "@klen/webhooks";
import Database from "better-sqlite3";
import { sql } from "kysely";
import { ENCRYPTED_COLUMNS, FieldCipher, isSealed } from "../src/storage/encryption.js";
import { sealWrittenInClear } from "../src/storage/reseal.js";
import { openStore, type Store } from "../src/storage/store.js";
import { type ApiClient, runCall, setupAccount } from "./helpers/api.js";
import { backends } from "./helpers/backends.js";
import { stopPostgres } from "./helpers/postgres.js";
import { type Receiver, startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

after(() => stopPostgres());

/** The encryption key of these tests' servers. */
const TEST_KEY = "a-test-encryption-key-0123456789";

/**
 * An agent and an endpoint at `rx` with a custom header holding a credential (which must never be
 * stored in clear); `rx` verifies with the endpoint's secret.
 */
async function accountWithHeader(api: ApiClient, rx: Receiver) {
  const made = await setupAccount(api, {
    endpointUrl: rx.url,
    endpoint: { headers: { "X-Receiver-Pass": "hdr-credential-4711" } },
  });
  rx.setSecret(made.endpoint.secret);
  return made;
}

test("FieldCipher round-trips, seals equal values equally, and rejects tampering", () => {
  const c = new FieldCipher("correct horse battery staple");
  const sealed = c.seal("+15551234567");
  assert.match(sealed, /^enc1:/);
  assert.notEqual(sealed, "+15551234567");
  assert.equal(c.open(sealed), "+15551234567");
  assert.equal(c.seal("+15551234567"), sealed, "deterministic, so equality lookups work");
  assert.notEqual(c.seal("+15551234568"), sealed);
  assert.notEqual(c.seal(sealed), sealed, "text that looks sealed is sealed like any other");
  assert.equal(c.open(c.seal(sealed)), sealed);
  assert.equal(c.open("plain text from before encryption"), "plain text from before encryption");
  const tampered = `${sealed.slice(0, -4)}AAA=`;
  assert.throws(() => c.open(tampered));
  assert.throws(() => new FieldCipher("another key entirely!").open(sealed));
});

test("with KLEN_ENCRYPTION_KEY, secrets, transcripts, summaries and phone numbers are not stored in clear", async () => {
  const dir = tempDir();
  const server = await spawnServer({
    dataDir: dir.path,
    env: { KLEN_ENCRYPTION_KEY: TEST_KEY, KLEN_INLINE_LIMIT: "2KiB" },
  });
  const rx = await startReceiver();
  try {
    const { agentId, endpoint } = await accountWithHeader(server.api, rx);
    const contact = await server.api.post(
      "/v1/contacts",
      {
        name: "Jane Roe",
        email: "jane@example.com",
        phone_number: "+15557654321",
      },
      { "idempotency-key": "contact-1" },
    );
    const callId = await runCall(server.api, agentId, "+15557654321");
    await rx.waitForCount(4);
    assert.deepEqual(rx.verifyFailures, [], "signed with the (decrypted) secret");
    assert.equal(rx.requests[0]!.json.call.phone_number, "+15557654321");
    assert.equal(rx.requests[0]!.headers["x-receiver-pass"], "hdr-credential-4711", "custom headers opened");
    assert.equal(
      rx.requests[0]!.json.call.contact.id,
      contact.body.id,
      "phone-number matching works on sealed values",
    );
    assert.match(rx.requests[2]!.json.call.transcript, /billing question/);
    const call = (await server.api.get(`/v1/calls/${callId}`)).body;
    assert.equal(call.phone_number, "+15557654321");
    assert.equal((await server.api.get(`/v1/endpoints/${endpoint.id}/secret`)).body.secret, endpoint.secret);

    // A transcript past the inline limit and a recording: blob files are sealed too, served in clear.
    const long = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "outbound",
      phone_number: "+15550009999",
    });
    await server.api.post(`/v1/calls/${long.body.id}/start`, {});
    await server.api.post(`/v1/calls/${long.body.id}/end`, {});
    const transcript = `Agent: Thanks for calling about your confidential-order-4711.\n`.repeat(60);
    assert.equal((await server.api.post(`/v1/calls/${long.body.id}/transcript`, { transcript })).status, 200);
    const audio = Buffer.concat([
      Buffer.from("RIFF"),
      Buffer.alloc(4000, 7),
      Buffer.from("secret-audio-tail"),
    ]);
    const rec = await fetch(`${server.url}/v1/calls/${long.body.id}/recording`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "audio/wav" },
      body: audio,
    });
    assert.equal(rec.status, 200);
    await rx.waitForCount(8);
    const byType = (t: string) =>
      rx.requests.find((r) => r.json.call.id === long.body.id && r.json.event_type === t)!.json.call;
    assert.ok(
      byType("call.transcript").transcript_url,
      JSON.stringify(byType("call.transcript")).slice(0, 300),
    );
    const fetched = await fetch(byType("call.transcript").transcript_url);
    assert.equal(await fetched.text(), transcript);
    const ranged = await fetch(byType("call.recording").recording_url, {
      headers: { range: "bytes=4004-4020" },
    });
    assert.equal(ranged.status, 206);
    assert.equal(Buffer.from(await ranged.arrayBuffer()).toString(), "secret-audio-tail");
    const files = readdirSync(join(dir.path, "blobs")).filter((f) => f.startsWith("blb_"));
    assert.ok(files.length >= 2);
    for (const f of files) {
      const bytes = readFileSync(join(dir.path, "blobs", f));
      assert.equal(bytes.includes("confidential-order-4711"), false, "transcript blob sealed");
      assert.equal(bytes.includes("secret-audio-tail"), false, "recording blob sealed");
    }

    // The rotated-out secret moves to the list of previous secrets, sealed like the current one.
    // With an Idempotency-Key the stored response (which shows the new secret) is sealed too, and
    // the replay is read back through the seal.
    const rotateKey = { "idempotency-key": "rotate-1" };
    const rotated = await server.api.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {}, rotateKey);
    assert.equal(rotated.status, 200);
    const replayed = await server.api.post(`/v1/endpoints/${endpoint.id}/rotate-secret`, {}, rotateKey);
    assert.equal(replayed.body.secret, rotated.body.secret);
    assert.equal(replayed.headers.get("idempotent-replayed"), "true");
    assert.ok(rotated.body.previous_secret_expires_at);
    // Read back through the seal, both secrets sign the next delivery.
    const next = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15557654321",
    });
    await server.api.post(`/v1/calls/${next.body.id}/start`, {});
    const sent = await waitFor("the delivery after the rotation", () =>
      rx.requests.find((r) => r.json.call.id === next.body.id),
    );
    assert.equal(String(sent.headers["webhook-signature"]).split(" ").length, 2);
    for (const secret of [endpoint.secret, rotated.body.secret]) {
      assert.ok(new Webhook(secret).verify(sent.body, sent.headers as Record<string, string>));
    }

    const db = new Database(`${dir.path}/klen.db`, { readonly: true });
    const dump = ["events", "endpoints", "calls", "contacts", "summary_jobs", "idempotency_keys"]
      .flatMap((t) => db.prepare(`SELECT * FROM ${t}`).all() as Array<Record<string, unknown>>)
      .map((row) => JSON.stringify(row))
      .join("\n");
    const remembered = db.prepare("SELECT key, request_hash FROM idempotency_keys").all() as Array<{
      key: string;
      request_hash: string;
    }>;
    assert.equal(remembered.length, 2, "both keyed responses are stored");
    // The request's hash is keyed: the plain SHA-256 of the request would let the phone number in
    // the body be guessed offline.
    const sha = (t: string) => createHash("sha256").update(t).digest("hex");
    const contactBody = JSON.stringify({
      name: "Jane Roe",
      email: "jane@example.com",
      phone_number: "+15557654321",
    });
    const stored = remembered.find((r) => r.key === "contact-1")!.request_hash;
    assert.match(stored, /^[0-9a-f]{64}$/);
    assert.notEqual(stored, sha(`POST /v1/contacts\n${sha(contactBody)}`));
    db.close();
    for (const secretText of [
      "+15557654321",
      "billing question",
      "billing discrepancy",
      endpoint.secret,
      rotated.body.secret,
      "Customer asked about billing",
      "hdr-credential-4711",
    ]) {
      assert.equal(dump.includes(secretText), false, `"${secretText}" is not stored in clear`);
    }
    assert.match(dump, /enc1:/);
  } finally {
    await rx.close();
    await server.kill();
    dir.remove();
  }
});

test("with KLEN_ENCRYPTION_KEY, text that looks sealed is stored and returned as written, never decrypted", async () => {
  const dir = tempDir();
  const server = await spawnServer({
    dataDir: dir.path,
    env: { KLEN_ENCRYPTION_KEY: TEST_KEY },
  });
  try {
    const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: "http://127.0.0.1:9/hook" });
    const db = new Database(`${dir.path}/klen.db`, { readonly: true });
    const sealed = (
      db.prepare("SELECT secret FROM endpoints WHERE id = ?").get(endpoint.id) as { secret: string }
    ).secret;
    db.close();
    assert.match(sealed, /^enc1:/);

    // Someone with a copy of the database and an API key must not get the API to decrypt it:
    // neither in a column that is never sealed (an agent's name) nor in one that is (a brief summary).
    const agent = await server.api.post("/v1/agents", { name: sealed });
    assert.equal(agent.status, 201);
    assert.equal(agent.body.name, sealed);
    assert.equal((await server.api.get(`/v1/agents/${agent.body.id}`)).body.name, sealed);
    const call = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15551234567",
    });
    await server.api.post(`/v1/calls/${call.body.id}/start`);
    const ended = await server.api.post(`/v1/calls/${call.body.id}/end`, { summary: sealed });
    assert.equal(ended.body.summary, sealed);
    const events = await server.api.get(`/v1/events?call_id=${call.body.id}&event_type=call.ended`);
    assert.equal(events.body.data[0].payload.call.summary, sealed);
    assert.notEqual(endpoint.secret, sealed);
    for (const text of [agent.body.name, ended.body.summary]) assert.notEqual(text, endpoint.secret);

    // Text that looks sealed but is not is no server error either.
    const odd = await server.api.post("/v1/agents", { name: "enc1:AAAA" });
    assert.equal(odd.status, 201);
    assert.equal((await server.api.get(`/v1/agents/${odd.body.id}`)).body.name, "enc1:AAAA");

    // Nor in a receiver's answer, which the attempt log keeps under the name of a sealed column of
    // another table (idempotency_keys.response_body).
    const answers = [sealed, "enc1:AAAA"];
    const receiver = await startReceiver({
      respond: (r) => ({ status: 200, body: answers[r.n - 1] ?? "ok" }),
    });
    try {
      const hooked = await server.api.post("/v1/endpoints", { url: `${receiver.url}/hook` });
      const second = await server.api.post("/v1/calls", {
        agent_id: agentId,
        type: "inbound",
        phone_number: "+15551234567",
      });
      await server.api.post(`/v1/calls/${second.body.id}/start`);
      await server.api.post(`/v1/calls/${second.body.id}/end`);
      const list = await waitFor("both attempts logged", async () => {
        const r = await server.api.get(`/v1/deliveries?endpoint_id=${hooked.body.id}`);
        return r.body.data?.length === 2 && r.body.data.every((d: any) => d.status === "succeeded")
          ? r
          : undefined;
      });
      assert.equal(list.status, 200);
      const bodies = list.body.data.map((d: any) => d.attempts[0].response_body).sort();
      assert.deepEqual(bodies, [...answers].sort());
    } finally {
      await receiver.close();
    }
  } finally {
    await server.kill();
    dir.remove();
  }
});

/** Every value of the sealed columns as stored (read under another name, so never opened). */
async function storedValues(store: Store): Promise<Array<{ where: string; value: string }>> {
  const out: Array<{ where: string; value: string }> = [];
  for (const [table, columns] of Object.entries(ENCRYPTED_COLUMNS))
    for (const column of columns) {
      const { rows } = await sql<{ raw: string | null }>`
        SELECT ${sql.ref(column)} AS raw FROM ${sql.table(table)}`.execute(store.db);
      for (const r of rows) if (r.raw !== null) out.push({ where: `${table}.${column}`, value: r.raw });
    }
  return out;
}

for (const backend of backends())
  test(`KLEN_ENCRYPTION_KEY set later: what was stored in clear is sealed, and old contacts still match by phone number (${backend.name})`, async () => {
    const db = await backend.fresh();
    const env = { KLEN_DATABASE_URL: db.databaseUrl };
    const key = { KLEN_ENCRYPTION_KEY: TEST_KEY };
    const rx = await startReceiver();
    let server = await spawnServer({ dataDir: db.dataDir, env });
    try {
      // Without a key: an endpoint with a custom header, a contact, a whole call and an
      // Idempotency-Key's stored answer, all in clear.
      const { agentId, endpoint } = await accountWithHeader(server.api, rx);
      const contact = await server.api.post(
        "/v1/contacts",
        { name: "Old Contact", phone_number: "+15557654321" },
        { "idempotency-key": "old-contact" },
      );
      await runCall(server.api, agentId, "+15557654321");
      await rx.waitForCount(4);
      await server.kill();

      // The job's work, in-process: everything in a sealed column is then sealed, and read back
      // as it was.
      const store = await openStore(db.databaseUrl, { encryptionKey: key.KLEN_ENCRYPTION_KEY });
      try {
        const before = await storedValues(store);
        assert.ok(before.some((v) => v.where === "contacts.phone_number" && v.value === "+15557654321"));
        assert.ok(
          before.some((v) => v.where === "endpoints.headers" && v.value.includes("hdr-credential-4711")),
        );
        // Several pages per table, and the process's other work runs between them (SQLite runs
        // each statement on the event loop).
        let turns = 0;
        const tick = setInterval(() => turns++, 1);
        const n = await sealWrittenInClear(store, { batch: 2 });
        clearInterval(tick);
        assert.ok(turns > 0, "timers ran during the walk");
        assert.equal(n, before.filter((v) => !isSealed(v.value)).length);
        const after = await storedValues(store);
        assert.deepEqual(
          after.filter((v) => !isSealed(v.value)),
          [],
          "nothing left in clear",
        );
        assert.equal(after.length, before.length);
        assert.equal(await sealWrittenInClear(store), 0, "done once: the next start skips the walk");
        // A row still in clear (as if stored by a process without the key before the walk reached it).
        await sql`INSERT INTO contacts (account_id, name, email, phone_number, created_at)
                  SELECT account_id, 'Unsealed', NULL, '+15550001111', created_at
                  FROM contacts WHERE id = ${contact.body.id}`.execute(store.db);
      } finally {
        await store.close();
      }

      server = await spawnServer({ dataDir: db.dataDir, env: { ...env, ...key } });
      assert.equal(
        (await server.api.get(`/v1/contacts/${contact.body.id}`)).body.phone_number,
        "+15557654321",
      );
      assert.equal(
        (await server.api.get(`/v1/endpoints/${endpoint.id}/secret`)).body.secret,
        endpoint.secret,
      );
      const replay = await server.api.post(
        "/v1/contacts",
        { name: "Old Contact", phone_number: "+15557654321" },
        { "idempotency-key": "old-contact" },
      );
      assert.equal(replay.headers.get("idempotent-replayed"), "true");
      assert.deepEqual(replay.body, contact.body);
      // Old contacts match new calls, sealed or still in clear.
      for (const [phone, name] of [
        ["+15557654321", "Old Contact"],
        ["+15550001111", "Unsealed"],
      ]) {
        const call = await server.api.post("/v1/calls", {
          agent_id: agentId,
          type: "inbound",
          phone_number: phone,
        });
        assert.equal(call.status, 201);
        const linked = (await server.api.get(`/v1/contacts/${call.body.contact_id}`)).body;
        assert.equal(linked.name, name, phone);
      }
      // Deliveries are still signed with the secret, and carry the custom header.
      await runCall(server.api, agentId, "+15557654321");
      await rx.waitForCount(8);
      assert.deepEqual(rx.verifyFailures, []);
      assert.equal(rx.requests.at(-1)!.headers["x-receiver-pass"], "hdr-credential-4711");
      assert.equal(rx.requests.at(-1)!.json.call.contact.name, "Old Contact");
      await server.kill();

      // A start without the key writes in clear again: the record that all was sealed goes.
      const plain = await openStore(db.databaseUrl);
      try {
        const record = () =>
          plain.db.selectFrom("settings").select("name").where("name", "=", "sealed_before_key").execute();
        assert.equal((await record()).length, 1);
        assert.equal(await sealWrittenInClear(plain), 0);
        assert.equal((await record()).length, 0);
      } finally {
        await plain.close();
      }
    } finally {
      await server.kill();
      await rx.close();
      await db.cleanup();
    }
  });

test("a process without KLEN_ENCRYPTION_KEY stops (exit 1) once another process turns encryption on; started again it is refused, and so is a wrong key, by name", async () => {
  const dir = tempDir();
  const key = TEST_KEY;
  const keyless = await spawnServer({ dataDir: dir.path });
  let keyed: ServerProcess | undefined;
  try {
    assert.equal((await keyless.api.post("/v1/agents", { name: "Before the key" })).status, 201);
    keyed = await spawnServer({ dataDir: dir.path, env: { KLEN_ENCRYPTION_KEY: key } });
    // It would otherwise go on reading sealed secrets it cannot open (its attempts crashed and
    // their leases ran out, unexplained) and writing clear values beside sealed ones.
    await waitFor("the process without the key to stop", () => keyless.proc.exitCode !== null, 30_000);
    assert.equal(keyless.proc.exitCode, 1);
    assert.match(keyless.output(), /another process sealed the data with KLEN_ENCRYPTION_KEY/);
    await assert.rejects(
      spawnServer({ dataDir: dir.path }),
      /start with the KLEN_ENCRYPTION_KEY it was sealed with/,
    );
    await assert.rejects(
      spawnServer({ dataDir: dir.path, env: { KLEN_ENCRYPTION_KEY: "another-key-0123456789abcdef" } }),
      /cannot be opened with this KLEN_ENCRYPTION_KEY/,
    );
    // The process with the key serves what was stored before it.
    const agents = await keyed.api.get("/v1/agents");
    assert.deepEqual(
      agents.body.data.map((a: { name: string }) => a.name),
      ["Before the key"],
    );
  } finally {
    await keyless.kill();
    await keyed?.kill();
    dir.remove();
  }
});
