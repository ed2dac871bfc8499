import assert from "node:assert/strict";
import { test } from "node:test";
import Database from "better-sqlite3";
import { FieldCipher } from "../src/storage/encryption.js";
import { runCall, setupAccount } from "./helpers/api.js";
import { startReceiver } from "./helpers/receiver.js";
import { spawnServer, tempDir } from "./helpers/server.js";

test("FieldCipher round-trips, seals equal values equally, and rejects tampering", () => {
  const c = new FieldCipher("correct horse battery staple");
  const sealed = c.seal("+15551234567");
  assert.match(sealed, /^enc1:/);
  assert.notEqual(sealed, "+15551234567");
  assert.equal(c.open(sealed), "+15551234567");
  assert.equal(c.seal("+15551234567"), sealed, "deterministic, so equality lookups work");
  assert.notEqual(c.seal("+15551234568"), sealed);
  assert.equal(c.seal(sealed), sealed, "sealing twice is a no-op");
  assert.equal(c.open("plain text from before encryption"), "plain text from before encryption");
  const tampered = `${sealed.slice(0, -4)}AAA=`;
  assert.throws(() => c.open(tampered));
  assert.throws(() => new FieldCipher("another key entirely!").open(sealed));
});

test("with KLEN_ENCRYPTION_KEY, secrets, transcripts, summaries and phone numbers are not stored in clear", async () => {
  const dir = tempDir();
  const server = await spawnServer({
    dataDir: dir.path,
    env: { KLEN_ENCRYPTION_KEY: "a-test-encryption-key-0123456789" },
  });
  const rx = await startReceiver();
  try {
    const { agentId, endpoint } = await setupAccount(server.api, { endpointUrl: rx.url });
    rx.setSecret(endpoint.secret);
    const contact = await server.api.post("/v1/contacts", {
      name: "Jane Roe",
      email: "jane@example.com",
      phone_number: "+15557654321",
    });
    const callId = await runCall(server.api, agentId, "+15557654321");
    await rx.waitForCount(4);
    assert.deepEqual(rx.verifyFailures, [], "signed with the (decrypted) secret");
    assert.equal(rx.requests[0]!.json.call.phone_number, "+15557654321");
    assert.equal(
      rx.requests[0]!.json.call.contact.id,
      contact.body.id,
      "phone-number matching works on sealed values",
    );
    assert.match(rx.requests[2]!.json.call.transcript, /billing question/);
    const call = (await server.api.get(`/v1/calls/${callId}`)).body;
    assert.equal(call.phone_number, "+15557654321");
    assert.equal((await server.api.get(`/v1/endpoints/${endpoint.id}/secret`)).body.secret, endpoint.secret);

    const db = new Database(`${dir.path}/klen.db`, { readonly: true });
    const dump = ["events", "endpoints", "calls", "contacts"]
      .flatMap((t) => db.prepare(`SELECT * FROM ${t}`).all() as Array<Record<string, unknown>>)
      .map((row) => JSON.stringify(row))
      .join("\n");
    db.close();
    for (const secretText of [
      "+15557654321",
      "billing question",
      "billing discrepancy",
      endpoint.secret,
      "Customer asked about billing",
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
