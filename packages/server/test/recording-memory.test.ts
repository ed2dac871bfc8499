import assert from "node:assert/strict";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { spawnServer, tempDir } from "./helpers/server.js";
import { streamUpload } from "./helpers/upload.js";

/** VmHWM (peak resident set) and VmRSS of a process, in KiB, from /proc. */
function memory(pid: number): { hwm: number; rss: number } {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1]);
  return { hwm: kib("VmHWM"), rss: kib("VmRSS") };
}

test("a 50 MiB recording streams to disk: the server's memory stays flat", async (t) => {
  const dir = tempDir();
  const srv = await spawnServer({ dataDir: dir.path });
  try {
    const agent = await srv.api.post("/v1/agents", { name: "Support" });
    const finished = async () => {
      const c = await srv.api.post("/v1/calls", {
        agent_id: agent.body.id,
        type: "inbound",
        phone_number: "+15551234567",
      });
      await srv.api.post(`/v1/calls/${c.body.id}/start`, {});
      await srv.api.post(`/v1/calls/${c.body.id}/end`, {});
      return c;
    };
    const pid = srv.proc.pid!;
    const cold = memory(pid);
    // Any upload costs a fixed amount of garbage (socket read buffers) until V8 collects it,
    // ~30 MiB measured here. A first 16 MiB upload reaches that plateau, so the 50 MiB one
    // shows whether memory grows with the size of the body.
    const warm = await finished();
    const w = await streamUpload({
      url: `${srv.url}/v1/calls/${warm.body.id}/recording`,
      apiKey: srv.apiKey,
      contentType: "audio/wav",
      totalBytes: 16 * 1024 * 1024,
    });
    assert.equal(w.status, 200, w.body);
    const call = await finished();
    const before = memory(pid);
    const size = 50 * 1024 * 1024;
    const res = await streamUpload({
      url: `${srv.url}/v1/calls/${call.body.id}/recording`,
      apiKey: srv.apiKey,
      contentType: "audio/wav",
      totalBytes: size,
      headers: { "idempotency-key": "big-upload" },
    });
    const afterUpload = memory(pid);
    assert.equal(res.status, 200, res.body);
    const grewKiB = afterUpload.hwm - before.hwm;
    t.diagnostic(`server RSS at start ${(cold.rss / 1024).toFixed(1)} MiB; after a 16 MiB warm-up upload:`);
    t.diagnostic(
      `server RSS before ${(before.rss / 1024).toFixed(1)} MiB (peak ${(before.hwm / 1024).toFixed(1)} MiB); ` +
        `after a ${size / 1048576} MiB upload RSS ${(afterUpload.rss / 1024).toFixed(1)} MiB, ` +
        `peak ${(afterUpload.hwm / 1024).toFixed(1)} MiB (peak grew ${(grewKiB / 1024).toFixed(1)} MiB)`,
    );
    // Memory, not time: buffering the body would add at least its 50 MiB to the peak.
    assert.ok(grewKiB < 40 * 1024, `peak RSS grew by ${grewKiB} KiB`);
    const events = await srv.api.get(`/v1/events?call_id=${call.body.id}&event_type=call.recording`);
    const id = new URL(events.body.data[0].payload.call.recording_url).pathname.split("/").pop()!;
    assert.equal(statSync(join(dir.path, "blobs", id)).size, size);
  } finally {
    await srv.kill();
    dir.remove();
  }
});
