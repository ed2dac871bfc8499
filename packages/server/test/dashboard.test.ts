import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { type Browser, chromium, type Page } from "playwright-core";
import { synthesizeWav } from "../src/simulator/wav.js";
import { apiClient, runCall, setupAccount } from "./helpers/api.js";
import { type Receiver, startReceiver } from "./helpers/receiver.js";
import { type ServerProcess, spawnServer, tempDir } from "./helpers/server.js";
import { waitFor } from "./helpers/wait.js";

// The dashboard in real Chromium (Debian's package) against the real server process and a real
// loopback receiver. Every step waits on what the page or the receiver shows, never on time.

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const XSS = "<img src=x onerror=alert(1)>";

describe("dashboard in Chromium", () => {
  const dir = tempDir();
  let server: ServerProcess;
  let receiver: Receiver;
  let failing: Receiver;
  let browser: Browser;
  let page: Page;
  let agentId: number;
  let endpointId: string;
  let callId: number;
  const dialogs: string[] = [];
  const pageErrors: string[] = [];
  const foreignRequests: string[] = [];

  before(async () => {
    // Retries far apart: a delivery that failed stays pending with retries left (Retry now). A
    // recover of more than one delivery runs in the background.
    server = await spawnServer({
      dataDir: dir.path,
      env: { KLEN_RETRY_SCHEDULE: "10m,10m", KLEN_RECOVER_BATCH: "1" },
    });
    receiver = await startReceiver();
    failing = await startReceiver({ respond: () => ({ status: 500, body: "receiver down" }) });
    ({ agentId } = await setupAccount(server.api));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    // Not UTC, so that local dates and times (Created before) are converted for real.
    page = await browser.newPage({
      viewport: { width: 1280, height: 900 },
      timezoneId: "America/Los_Angeles",
    });
    page.setDefaultTimeout(15_000);
    await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
    page.on("dialog", (d) => {
      dialogs.push(d.message());
      void d.dismiss();
    });
    page.on("pageerror", (err) => pageErrors.push(err.message));
    page.on("request", (req) => {
      if (!req.url().startsWith(server.url)) foreignRequests.push(req.url());
    });
  });

  after(async () => {
    await browser?.close();
    await server?.kill();
    await receiver?.close();
    await failing?.close();
    dir.remove();
  });

  const section = (name: string) =>
    page.getByRole("navigation").getByRole("link", { name, exact: true }).click();

  /** How many items a list route has, through every page. */
  const countAll = async (path: string) => {
    let n = 0;
    let cursor: string | null = null;
    do {
      const r = await server.api.get(`${path}?limit=100${cursor ? `&cursor=${cursor}` : ""}`);
      n += r.body.data.length;
      cursor = r.body.next_cursor;
    } while (cursor);
    return n;
  };

  test("the static files are served locally with content types, CSP and revalidation", async () => {
    const index = await fetch(`${server.url}/`);
    assert.equal(index.status, 200);
    assert.match(index.headers.get("content-type")!, /^text\/html/);
    assert.match(index.headers.get("content-security-policy")!, /default-src 'self'/);
    const html = await index.text();
    assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//, "no asset from another origin");
    const js = await fetch(`${server.url}/app.js`);
    assert.match(js.headers.get("content-type")!, /^text\/javascript/);
    assert.equal(js.headers.get("cache-control"), "no-cache");
    const etag = js.headers.get("etag")!;
    const again = await fetch(`${server.url}/app.js`, { headers: { "if-none-match": etag } });
    assert.equal(again.status, 304);
    assert.match((await fetch(`${server.url}/styles.css`)).headers.get("content-type")!, /^text\/css/);
    assert.equal((await fetch(`${server.url}/views/common.js`)).status, 200);
    assert.equal((await fetch(`${server.url}/package.json`)).status, 404);
    assert.equal((await fetch(`${server.url}/nope.js`)).status, 404);
  });

  test("a wrong API key shows an error and stores nothing", async () => {
    await page.goto(server.url);
    await page.getByLabel("API key").fill("klen_wrong_key_0000000000");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "not accepted" }).waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.length), 0);
    // A key that could not even be sent in a header is "not accepted" too, not "cannot reach".
    await page.evaluate(() => {
      document.querySelector('[role="alert"]')!.textContent = "";
    });
    await page.getByLabel("API key").fill("ключ-клен");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "not accepted" }).waitFor();
  });

  test("signs in with the API key and creates an endpoint through the form", async () => {
    await page.getByLabel("API key").fill(server.apiKey);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("klen.apiKey")), server.apiKey);
    // No attempts yet: the value axes still read in whole, distinct steps.
    await page.locator("svg.chart").waitFor();
    const labels = await page.locator('svg.chart text.axis[text-anchor="end"]').allTextContents();
    const counts = labels.filter((l) => !l.endsWith("ms"));
    const latencies = labels.filter((l) => l.endsWith("ms"));
    assert.ok(counts.length >= 2 && counts.every((l) => /^\d+$/.test(l)), counts.join(" / "));
    assert.ok(latencies.length >= 2 && latencies.every((l) => /^\d+ ms$/.test(l)), latencies.join(" / "));
    assert.equal(new Set(counts).size, counts.length, counts.join(" / "));
    assert.equal(new Set(latencies).size, latencies.length, latencies.join(" / "));

    await section("Endpoints");
    await page.getByRole("link", { name: "Add endpoint" }).click();
    await page.getByLabel("Endpoint URL").fill(`${receiver.url}/hooks`);
    await page.getByLabel("Description").fill("CRM sync");
    await page.getByLabel("Custom headers").fill("X-Team: voice");
    await page.getByRole("button", { name: "Create endpoint" }).click();
    await page.getByRole("heading", { name: "CRM sync" }).waitFor();
    endpointId = new URL(page.url()).hash.split("/")[2]!;
    assert.match(endpointId, /^ep_/);

    const e = await server.api.get(`/v1/endpoints/${endpointId}`);
    assert.equal(e.body.url, `${receiver.url}/hooks`);
    assert.deepEqual(e.body.headers, { "X-Team": "voice" });
    assert.deepEqual(e.body.event_types, []);

    await section("Endpoints");
    await page.locator(`tr[data-endpoint="${endpointId}"]`).getByText(`${receiver.url}/hooks`).waitFor();
    await page.locator(`tr[data-endpoint="${endpointId}"]`).getByText("enabled").waitFor();
  });

  test("each page has its own title and takes focus to its heading; only status areas are live", async () => {
    assert.equal(await page.locator("[aria-live]").count(), 0, "no live region but role=status/alert ones");
    const focusedHeading = () =>
      page.evaluate(() => {
        const a = document.activeElement;
        return a?.tagName === "H1" ? a.textContent : undefined;
      });
    // A bad deep link is a page of its own that leads back.
    await page.evaluate(() => {
      location.hash = "#/endpoints/ep_nonexistent";
    });
    await page.getByRole("heading", { name: "Endpoint not found" }).waitFor();
    await page.getByRole("link", { name: "← Endpoints" }).waitFor();
    assert.equal(await page.title(), "Endpoint not found · Klen Webhooks");

    for (const name of ["Deliveries", "Events", "Calls", "Endpoints"]) {
      if (name === "Calls") {
        // By keyboard: Enter on the nav link.
        await page.getByRole("navigation").getByRole("link", { name, exact: true }).focus();
        await page.keyboard.press("Enter");
      } else await section(name);
      await waitFor(`focus on the ${name} heading`, async () => (await focusedHeading()) === name);
      assert.equal(await page.title(), `${name} · Klen Webhooks`);
    }
  });

  test("reveals the endpoint's signing secret", async () => {
    await page.getByRole("link", { name: `${receiver.url}/hooks` }).click();
    const secret = page.locator("code.secret");
    await secret.filter({ hasText: "••••" }).waitFor();
    const api = await server.api.get(`/v1/endpoints/${endpointId}/secret`);
    // Copy takes the secret to the clipboard without putting it on the screen.
    await page.getByRole("button", { name: "Copy signing secret" }).click();
    await page.getByRole("button", { name: "Copy signing secret: copied" }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), api.body.secret);
    assert.match((await secret.textContent())!, /••••/);
    await page.getByRole("button", { name: "Reveal" }).click();
    await secret.filter({ hasText: /^whsec_[A-Za-z0-9+/]+=*$/ }).waitFor();
    const shown = await secret.textContent();
    assert.equal(shown, api.body.secret);
    receiver.setSecret(shown!); // from here on, every delivery is verified with standardwebhooks
  });

  test("a call's events and succeeded deliveries with their attempts appear", async () => {
    callId = await runCall(server.api, agentId);
    const deliveries = await waitFor("4 succeeded deliveries", async () => {
      const r = await server.api.get(`/v1/deliveries?endpoint_id=${endpointId}&status=succeeded`);
      return r.body.data.length === 4 ? (r.body.data as Array<{ id: string; event_id: string }>) : undefined;
    });

    await section("Calls");
    await page.getByRole("link", { name: `#${callId}`, exact: true }).click();
    await page.getByRole("heading", { name: `Call #${callId}` }).waitFor();
    // Times name their zone (the browser's, America/Los_Angeles here) and a past year's say so.
    await page.getByText(/^Created .* (PST|GMT-8)$/).waitFor();
    const [older, thisYear] = await page.evaluate(async () => {
      const { fmtTime } = await import("/dom.js" as string);
      return [fmtTime("2025-07-04T12:00:00Z"), fmtTime(new Date().toISOString())];
    });
    assert.match(older, /2025/);
    assert.match(older, /PDT|GMT-7/);
    assert.doesNotMatch(thisYear, new RegExp(String(new Date().getFullYear())));
    for (const type of ["call.started", "call.ended", "call.transcript", "call.summary"])
      await page.locator(`tr.event[data-type="${type}"]`).waitFor();
    await page.locator('tr.event[data-type="call.ended"]').getByRole("button").click();
    await page
      .locator("pre.code")
      .filter({ hasText: '"summary": "Customer asked about billing."' })
      .filter({ hasText: '"klen_call_id": "call_abc123"' })
      .waitFor();

    await section("Deliveries");
    await page.getByLabel("Status").selectOption("succeeded");
    for (const d of deliveries) await page.locator(`tr.delivery[data-delivery="${d.id}"]`).waitFor();
    const first = deliveries[0]!;
    const row = page.locator(`tr.delivery[data-delivery="${first.id}"]`);
    assert.equal(await row.getAttribute("data-status"), "succeeded");
    await row.getByRole("button", { name: `Attempts of ${first.id}` }).click();
    const attempt = page.locator(
      `tr.delivery[data-delivery="${first.id}"] + tr.detail tr.attempt[data-number="1"]`,
    );
    await attempt.waitFor();
    const text = (await attempt.locator("td").allTextContents()).join(" | ");
    assert.match(text, /\b200\b/);
    assert.match(text, /\d+ ms/);
    assert.match(text, /\bok\b/, "the receiver's response body");
  });

  test("delivery rows show their event type without fetching each event", async () => {
    const lookups: string[] = [];
    const onRequest = (req: { url(): string }) => {
      const path = new URL(req.url()).pathname;
      if (path.startsWith("/v1/events/")) lookups.push(path);
    };
    page.on("request", onRequest);
    try {
      await section("Endpoints");
      await page.getByRole("link", { name: `${receiver.url}/hooks` }).click();
      await page.getByRole("heading", { name: "CRM sync" }).waitFor();
      await page.reload(); // a fresh page: nothing looked up earlier is cached
      await page
        .locator('table[aria-label="Deliveries to this endpoint"] .event-type', { hasText: "call.ended" })
        .waitFor();
      await section("Deliveries");
      await page.locator('table[aria-label="Deliveries"] .event-type', { hasText: "call.ended" }).waitFor();
      assert.deepEqual(lookups, [], "deliveries carry event_type");
    } finally {
      page.off("request", onRequest);
    }
  });

  test("retrying a delivery from the UI sends a new attempt to the receiver", async () => {
    const r = await server.api.get(`/v1/deliveries?endpoint_id=${endpointId}&status=succeeded`);
    const delivery = r.body.data[0] as { id: string; event_id: string };
    const before = receiver.requests.length;
    const detail = page.locator(`tr.delivery[data-delivery="${delivery.id}"] + tr.detail`);
    if (await detail.isHidden())
      await page.getByRole("button", { name: `Attempts of ${delivery.id}` }).click();
    await detail.getByRole("button", { name: "Retry now" }).click();
    await receiver.waitForCount(before + 1);
    assert.equal(receiver.requests[before]!.id, delivery.event_id, "same webhook-id as the original");
    // The page shows the new attempt once the dispatcher has logged it.
    await page
      .locator(`tr.delivery[data-delivery="${delivery.id}"] + tr.detail tr.attempt[data-number="2"]`)
      .waitFor();
    assert.deepEqual(receiver.verifyFailures, []);
  });

  test("the overview charts delivery attempts", async () => {
    await section("Overview");
    await page.locator("svg.chart rect.bar-ok").first().waitFor();
    await page.locator(".tile").filter({ hasText: "Success rate" }).filter({ hasText: "100.0%" }).waitFor();
    // What the bars add up to is in the chart's accessible name, not only in mouse tooltips.
    const named = (await page.locator("svg.chart").getAttribute("aria-label"))!;
    const m = /: (\d+) succeeded and 0 failed in this range/.exec(named);
    assert.ok(m && Number(m[1]) > 0, named);
    // On a phone the chart is drawn to its width, so its labels keep a readable size.
    await page.setViewportSize({ width: 390, height: 844 });
    try {
      await waitFor("chart labels of 10 px or more at 390 px", () =>
        page.evaluate(() => {
          const label = document.querySelector("svg.chart text.axis");
          return label !== null && label.getBoundingClientRect().height >= 10;
        }),
      );
    } finally {
      await page.setViewportSize({ width: 1280, height: 900 });
    }
  });

  test("sends a test call to the endpoint", async () => {
    await section("Endpoints");
    await page.getByRole("link", { name: `${receiver.url}/hooks` }).click();
    await page.getByRole("heading", { name: "CRM sync" }).waitFor();
    await page.getByRole("button", { name: "Send test call" }).click();
    const link = page.getByRole("status").getByRole("link", { name: /^call #\d+$/ });
    await link.waitFor();
    // The button disabled itself while the call started; focus came back to it, not to the page.
    await waitFor("focus back on Send test call", () =>
      page.evaluate(() => document.activeElement?.textContent === "Send test call"),
    );
    const testCallId = Number((await link.textContent())!.replace("call #", ""));
    const ended = await waitFor("the test call's call.ended at the receiver", () =>
      receiver.requests.find((r) => r.json?.call?.id === testCallId && r.json.event_type === "call.ended"),
    );
    assert.equal(ended.json.call.status, "completed");
    assert.deepEqual(receiver.verifyFailures, []);
    // The page follows the call: its deliveries show up without a reload.
    await page
      .locator('table[aria-label="Deliveries to this endpoint"] tr.delivery')
      .filter({ has: page.getByRole("link", { name: `#${testCallId}`, exact: true }) })
      .first()
      .waitFor();
  });

  test("edits the endpoint's filters, rotates its secret and recovers", async () => {
    await page.getByLabel("Endpoint URL").fill(`${receiver.url}/hooks/v2`);
    await page.getByLabel("Description").fill("CRM sync (edited)");
    await page.getByLabel("call.ended").check();
    await page.getByLabel("call.failed").check();
    await page.getByLabel("Agent ids").fill(String(agentId));
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.getByText("Saved.").waitFor();
    const e = await server.api.get(`/v1/endpoints/${endpointId}`);
    assert.equal(e.body.url, `${receiver.url}/hooks/v2`);
    assert.equal(e.body.description, "CRM sync (edited)");
    assert.deepEqual([...e.body.event_types].sort(), ["call.ended", "call.failed"]);
    assert.deepEqual(e.body.agent_ids, [agentId]);
    // The header shows what was saved, without a reload.
    assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "CRM sync (edited)");
    assert.equal(await page.locator(".endpoint-meta .url").textContent(), `${receiver.url}/hooks/v2`);
    assert.match(
      (await page.locator(".endpoint-meta .endpoint-filters").textContent())!,
      new RegExp(`^only call\\.(ended|failed), call\\.(ended|failed) of agents ${agentId}$`),
    );

    // A rate limit: a bad value is named before sending, one over the API's range by the API's
    // error, a good one is saved and shown, and emptying the field removes it.
    const rate = page.getByLabel("Rate limit");
    await rate.fill("2.5");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.getByText('Rate limit: "2.5" is not a whole number').waitFor();
    // The field at fault is marked, described by the error and focused.
    const marked = () =>
      rate.evaluate((el) => ({
        invalid: el.getAttribute("aria-invalid"),
        description: (el.getAttribute("aria-describedby") ?? "")
          .split(" ")
          .map((id) => document.getElementById(id)?.textContent ?? "")
          .join(" "),
        focused: document.activeElement === el,
      }));
    const local = await marked();
    assert.equal(local.invalid, "true");
    assert.match(local.description, /Rate limit: "2\.5" is not a whole number/);
    assert.equal(local.focused, true);
    // A number JavaScript would read but the API does not write: refused, not saved as 16.
    await rate.fill("0x10");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.getByText('Rate limit: "0x10" is not a whole number').waitFor();
    assert.equal((await server.api.get(`/v1/endpoints/${endpointId}`)).body.rate_limit, null);
    await rate.fill("100001");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.getByText(/rate_limit/).waitFor();
    const remote = await marked();
    assert.equal(remote.invalid, "true");
    assert.match(remote.description, /rate_limit/);
    await rate.fill("50");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.locator(".endpoint-meta").getByText("at most 50 attempts a second").waitFor();
    assert.equal((await server.api.get(`/v1/endpoints/${endpointId}`)).body.rate_limit, 50);
    assert.equal((await marked()).invalid, null, "no longer marked once saved");
    await rate.fill("");
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.getByText("Saved.").waitFor();
    await waitFor("the limit removed", async () =>
      (await server.api.get(`/v1/endpoints/${endpointId}`)).body.rate_limit === null ? true : undefined,
    );
    assert.equal(await page.locator(".endpoint-meta").getByText("attempts a second").count(), 0);

    const old = (await server.api.get(`/v1/endpoints/${endpointId}/secret`)).body.secret as string;
    await page.getByRole("button", { name: "Rotate secret" }).click();
    await page.getByText("Secret rotated.").waitFor();
    const shown = await page.locator("code.secret").textContent();
    const now = await server.api.get(`/v1/endpoints/${endpointId}/secret`);
    assert.notEqual(shown, old);
    assert.equal(shown, now.body.secret);
    assert.ok(now.body.previous_secret_expires_at, "the old secret stays valid for the grace period");

    // Expiring the old secret at once breaks receivers still on it: a double-click only asks.
    await page.getByLabel("Grace period for the old secret").selectOption("0");
    const rotate = page.locator("button", { hasText: /^(Rotate secret|Confirm rotate)$/ });
    await rotate.dblclick();
    await page.getByText("Click Confirm rotate to rotate with no grace period").waitFor();
    assert.equal((await server.api.get(`/v1/endpoints/${endpointId}/secret`)).body.secret, now.body.secret);
    await page.locator("button[data-armed=ready]", { hasText: "Confirm rotate" }).click();
    await page.getByText("Secret rotated. Earlier secrets no longer verify.").waitFor();
    const expired = await server.api.get(`/v1/endpoints/${endpointId}/secret`);
    assert.notEqual(expired.body.secret, now.body.secret);
    assert.equal(await page.locator("code.secret").textContent(), expired.body.secret);
    // Armed for "now", then a grace period chosen: that click rotates and disarms, so a later
    // single click with "now" asks again.
    await rotate.click();
    await page.locator("button[data-armed]", { hasText: "Confirm rotate" }).waitFor();
    await page.getByLabel("Grace period for the old secret").selectOption("3600");
    await rotate.click();
    await page.getByText("Secret rotated. Deliveries are also signed").waitFor();
    assert.equal(await page.locator("button[data-armed]").count(), 0);
    const graced = (await server.api.get(`/v1/endpoints/${endpointId}/secret`)).body.secret;
    await page.getByLabel("Grace period for the old secret").selectOption("0");
    await rotate.click();
    await page.getByText("Click Confirm rotate to rotate with no grace period").waitFor();
    assert.equal((await server.api.get(`/v1/endpoints/${endpointId}/secret`)).body.secret, graced);

    await page.getByRole("button", { name: "Recover failed deliveries" }).click();
    await page.getByText(/Queued 0 deliveries/).waitFor();
  });

  test("disables the endpoint after a second click; a double-click only asks", async () => {
    const disable = page.locator(".page-header .actions button:last-child");
    await disable.dblclick();
    await page.getByText("Click Confirm disable to stop deliveries").waitFor();
    assert.equal(await disable.textContent(), "Confirm disable");
    assert.equal((await server.api.get(`/v1/endpoints/${endpointId}`)).body.disabled, false);
    await page.locator(".page-header .actions button[data-armed=ready]").click();
    await page.getByRole("button", { name: "Enable endpoint" }).waitFor();
    await page.locator(".endpoint-meta .badge", { hasText: "disabled" }).waitFor();
    const e = await server.api.get(`/v1/endpoints/${endpointId}`);
    assert.equal(e.body.disabled, true);
    assert.equal(e.body.disabled_reason, "disabled by user");
  });

  test("Send test call says why a disabled or filtered endpoint would get nothing, and starts no call", async () => {
    const newestCall = async () => (await server.api.get("/v1/calls?limit=1")).body.data[0].id as number;
    const before = await newestCall();
    const status = page.getByRole("status");
    await page.getByRole("button", { name: "Send test call" }).click();
    await status
      .filter({ hasText: "This endpoint is disabled, so a test call would send it nothing" })
      .waitFor();

    // Enabled, but its agent filter has only the account's agent, not the test calls' one.
    await page.getByRole("button", { name: "Enable endpoint" }).click();
    await page.getByRole("button", { name: "Disable endpoint" }).waitFor();
    const agents = (await server.api.get("/v1/agents")).body.data as Array<{ id: number; name: string }>;
    const testAgent = agents.find((a) => a.name === "Test Agent")!;
    await page.getByRole("button", { name: "Send test call" }).click();
    const warning = status.filter({
      hasText: `leaves out test calls, which run as agent ${testAgent.id} (Test Agent)`,
    });
    await warning.waitFor();
    assert.equal(await newestCall(), before, "no test call was started");
    // The warning is about the endpoint as it was: a Save or a Refresh takes it away.
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.getByText("Saved.").waitFor();
    await warning.waitFor({ state: "detached" });
    await page.getByRole("button", { name: "Send test call" }).click();
    await warning.waitFor();
    await page.getByRole("button", { name: "Refresh" }).click();
    await warning.waitFor({ state: "detached" });
  });

  test("a test call none of whose events reached the endpoint turns its banner into a warning", async () => {
    const made = await server.api.post("/v1/endpoints", {
      url: `${failing.url}/test-call`,
      description: "Down",
    });
    assert.equal(made.status, 201);
    await page.goto(`${server.url}/#/endpoints/${made.body.id}`);
    await page.getByRole("button", { name: "Send test call" }).click();
    const status = page.getByRole("status");
    await status.filter({ hasText: "Its events arrive here in a few seconds." }).waitFor();
    const warned = status.filter({
      hasText: /^No event of test call #\d+ has reached this endpoint: every attempt so far failed/,
    });
    await warned.waitFor();
    assert.equal(await warned.getAttribute("class"), "note note-warn");
    assert.equal((await server.api.patch(`/v1/endpoints/${made.body.id}`, { disabled: true })).status, 200);
    // Back where the next test starts.
    await page.goto(`${server.url}/#/endpoints/${endpointId}`);
    await page.getByRole("heading", { name: "CRM sync (edited)" }).waitFor();
  });

  test("an endpoint changed behind the page: its header and Enable / Disable button follow, and do what they say", async () => {
    const toggle = page.locator(".page-header .actions button:last-child");
    assert.equal(await toggle.textContent(), "Disable endpoint");
    // Disabled elsewhere (the worker on a 410, another tab), then the page's form saves.
    await server.api.patch(`/v1/endpoints/${endpointId}`, { disabled: true });
    await page.getByRole("button", { name: "Save changes" }).click();
    await page.locator(".endpoint-meta .badge", { hasText: "disabled" }).waitFor();
    // The button says what its click does now: it used to keep saying "Disable endpoint" and
    // enable the endpoint in one click.
    assert.equal(await toggle.textContent(), "Enable endpoint");
    assert.equal((await server.api.get(`/v1/endpoints/${endpointId}`)).body.disabled, true);

    // Enabled elsewhere: the deliveries' Refresh reads the endpoint again too.
    await server.api.patch(`/v1/endpoints/${endpointId}`, { disabled: false });
    const recent = page.locator(".card", { hasText: "Recent deliveries" });
    await recent.getByRole("button", { name: "Refresh" }).click();
    await page.getByRole("button", { name: "Disable endpoint" }).waitFor();
    assert.equal(await page.locator(".endpoint-meta .badge", { hasText: "disabled" }).count(), 0);
  });

  test("Retry now shows a failed attempt at once when the delivery has retries left", async () => {
    const ep = await server.api.post("/v1/endpoints", {
      url: `${failing.url}/down`,
      description: "Down receiver",
      event_types: ["call.failed"],
    });
    const call = await server.api.post("/v1/test-calls", { endpoint_id: ep.body.id, outcome: "busy" });
    const delivery = await waitFor("the failed first attempt", async () => {
      const r = await server.api.get(`/v1/deliveries?call_id=${call.body.call_id}`);
      const d = r.body.data[0];
      return d?.attempts.length === 1 ? (d as { id: string; event_id: string; status: string }) : undefined;
    });
    assert.equal(delivery.status, "pending", "the next retry is 10 minutes away");

    await page.evaluate((id) => {
      location.hash = `#/deliveries?event_id=${id}`;
    }, delivery.event_id);
    await page.getByRole("button", { name: `Attempts of ${delivery.id}` }).click();
    const detail = page.locator(`tr.delivery[data-delivery="${delivery.id}"] + tr.detail`);
    const retryNow = detail.getByRole("button", { name: "Retry now" });
    assert.equal(
      await retryNow.getAttribute("title"),
      "Sends an attempt now; if it fails, the next scheduled retry stays as it was",
    );
    await retryNow.click();
    await failing.waitForCount(2);
    // Within the default 15 s wait; the page used to wait 20 s for the delivery to leave pending.
    await detail.locator('tr.attempt[data-number="2"]').waitFor();
    assert.match((await detail.locator('tr.attempt[data-number="2"]').textContent())!, /500/);
    const row = page.locator(`tr.delivery[data-delivery="${delivery.id}"]`);
    assert.equal(await row.getAttribute("data-status"), "pending");

    // Refresh shows an attempt made meanwhile (a manual one again: the delivery stays pending, its
    // 10-minute retry kept), and keeps the delivery open.
    assert.equal((await server.api.post(`/v1/deliveries/${delivery.id}/retry`)).status, 202);
    await failing.waitForCount(3);
    await waitFor("the third attempt logged", async () => {
      const r = await server.api.get(`/v1/deliveries/${delivery.id}`);
      return r.body.attempts.length === 3;
    });
    await page.getByRole("button", { name: "Refresh" }).click();
    await detail.locator('tr.attempt[data-number="3"]').waitFor();
    assert.equal(await row.getAttribute("data-status"), "pending");
  });

  test("hostile shapes: failing endpoints flagged, a malformed link is not found, long ids wrap, RTL names isolated, a 429 waited out", async () => {
    // The endpoint whose every attempt failed (above) is flagged in the list, not "enabled".
    await section("Endpoints");
    const down = page.locator("tr", { hasText: "Down receiver" });
    await down.locator(".badge", { hasText: "failing" }).waitFor();

    // A stray % in a hand-edited link: the not-found page, not a blank app.
    await page.evaluate(() => {
      location.hash = "#/calls/%";
    });
    await page.getByRole("heading", { name: "Call not found" }).waitFor();

    // An agent name and a Klen call id of 190 characters with no space, and a right-to-left
    // override in the ended reason: the call page wraps them and does not scroll sideways.
    const agent = await server.api.post("/v1/agents", { name: `${"W".repeat(190)}\u202e` });
    const call = await server.api.post("/v1/calls", {
      agent_id: agent.body.id,
      type: "outbound",
      phone_number: "+15551234567",
      klen_call_id: "k".repeat(190),
    });
    assert.equal(call.status, 201, JSON.stringify(call.body));
    const failed = await server.api.post(`/v1/calls/${call.body.id}/fail`, {
      failure_reason: "busy",
      ended_reason: "line busy \u202e(1 di)",
    });
    assert.equal(failed.status, 200, JSON.stringify(failed.body));
    await page.evaluate((id) => {
      location.hash = `#/calls/${id}`;
    }, call.body.id);
    await page.getByRole("heading", { name: `Call #${call.body.id}` }).waitFor();
    await page.getByText("Ended reason").waitFor();
    const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(widths[0]! <= widths[1]!, `page ${widths[0]} px wide in a ${widths[1]} px window`);
    assert.equal(
      await page.locator(".facts dd bdi").first().textContent(),
      `${"W".repeat(190)}\u202e`,
      "the agent's name in its own bidi isolate",
    );

    // Over the rate limit: the page waits out Retry-After and shows the answer, not the 429.
    let limited = 0;
    await page.route("**/v1/calls?**", (route) => {
      if (limited++ === 0)
        return route.fulfill({
          status: 429,
          headers: { "retry-after": "1", "content-type": "application/json" },
          body: JSON.stringify({
            error: { code: "rate_limited", message: "too many requests for this API key" },
          }),
        });
      return route.continue();
    });
    try {
      await section("Calls");
      await page.locator(`tr.call[data-call="${call.body.id}"]`).waitFor();
      assert.equal(limited, 2, "one 429, then the list");
      assert.equal(await page.getByText("too many requests").count(), 0);
    } finally {
      await page.unroute("**/v1/calls?**");
    }
  });

  test("a delivery waiting behind an earlier event of its call says so", async () => {
    const ep = await server.api.post("/v1/endpoints", {
      url: `${failing.url}/ordered`,
      description: "Ordered receiver",
      event_types: ["call.started", "call.ended"],
    });
    const call = await server.api.post("/v1/test-calls", { endpoint_id: ep.body.id });
    type D = {
      id: string;
      event_id: string;
      event_type: string;
      status: string;
      next_attempt_at: string | null;
    };
    // call.started failed and waits 10 minutes for its retry; call.ended waits behind it.
    const ended = await waitFor("call.ended queued behind the failed call.started", async () => {
      const r = await server.api.get(`/v1/deliveries?call_id=${call.body.call_id}`);
      const ds = r.body.data as Array<D & { attempts: unknown[] }>;
      const started = ds.find((d) => d.event_type === "call.started");
      const end = ds.find((d) => d.event_type === "call.ended");
      return started?.attempts.length === 1 && end ? end : undefined;
    });
    assert.equal(ended.status, "pending");
    assert.equal(ended.next_attempt_at, null);

    await page.evaluate((id) => {
      location.hash = `#/deliveries?event_id=${id}`;
    }, ended.event_id);
    const row = page.locator(`tr.delivery[data-delivery="${ended.id}"]`);
    await row.getByText("waits for an earlier event", { exact: true }).waitFor();
    await page.getByRole("button", { name: `Attempts of ${ended.id}` }).click();
    const detail = page.locator(`tr.delivery[data-delivery="${ended.id}"] + tr.detail`);
    await detail.getByText("waits for an earlier event of its call").waitFor();
    await detail
      .getByText(
        `No attempt yet: it is sent after the earlier events of call #${call.body.call_id} to this endpoint.`,
      )
      .waitFor();
    // The API refuses it (409 delivery_waiting): the page does not offer it.
    assert.equal(await detail.getByRole("button", { name: "Retry now" }).count(), 0);
  });

  /** A second tab, signed in to another server, on its Deliveries page. */
  async function deliveriesTabOf(other: ServerProcess): Promise<Page> {
    const tab = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    tab.setDefaultTimeout(15_000);
    tab.on("pageerror", (err) => pageErrors.push(err.message));
    await tab.goto(other.url);
    await tab.getByLabel("API key").fill(other.apiKey);
    await tab.getByRole("button", { name: "Sign in" }).click();
    await tab.getByRole("heading", { name: "Overview" }).waitFor();
    await tab.evaluate(() => {
      location.hash = "#/deliveries";
    });
    return tab;
  }

  test("a delivery not sent yet says whether it is queued or waits for an earlier event; only a queued one offers Retry now", async () => {
    // An API without a dispatcher: call.started stays due and unsent, call.ended waits behind it.
    const apiDir = tempDir();
    const api = await spawnServer({ dataDir: apiDir.path, role: "api" });
    let other: Page | undefined;
    try {
      const { agentId: agent } = await setupAccount(api.api, { endpointUrl: `${receiver.url}/unsent` });
      const c = await api.api.post("/v1/calls", {
        agent_id: agent,
        type: "inbound",
        phone_number: "+15550004001",
      });
      for (const step of ["start", "end"])
        assert.equal((await api.api.post(`/v1/calls/${c.body.id}/${step}`, {})).status, 200);
      type D = { id: string; event_type: string; status: string; next_attempt_at: string | null };
      const ds = (await api.api.get(`/v1/deliveries?call_id=${c.body.id}`)).body.data as D[];
      const started = ds.find((d) => d.event_type === "call.started")!;
      const ended = ds.find((d) => d.event_type === "call.ended")!;
      assert.ok(started.status === "pending" && started.next_attempt_at, "call.started is due");
      assert.ok(ended.status === "pending" && ended.next_attempt_at === null, "call.ended is parked");

      other = await deliveriesTabOf(api);
      const due = other
        .locator(`tr.delivery[data-delivery="${started.id}"]`)
        .getByText("queued", { exact: true });
      await due.waitFor();
      assert.match((await due.getAttribute("title"))!, /^First attempt due /);
      const parked = other
        .locator(`tr.delivery[data-delivery="${ended.id}"]`)
        .getByText("waits for an earlier event", { exact: true });
      await parked.waitFor();
      assert.equal(
        await parked.getAttribute("title"),
        `Sent after the earlier events of call #${c.body.id} to this endpoint are finished`,
      );

      await other.getByRole("button", { name: `Attempts of ${ended.id}` }).click();
      const parkedDetail = other.locator(`tr.delivery[data-delivery="${ended.id}"] + tr.detail`);
      await parkedDetail.getByText("waits for an earlier event of its call").waitFor();
      assert.equal(await parkedDetail.getByRole("button", { name: "Retry now" }).count(), 0);
      await other.getByRole("button", { name: `Attempts of ${started.id}` }).click();
      const dueDetail = other.locator(`tr.delivery[data-delivery="${started.id}"] + tr.detail`);
      await dueDetail.getByRole("button", { name: "Retry now" }).waitFor();
    } finally {
      await other?.close();
      await api.kill();
      apiDir.remove();
    }
  });

  test("a delivery whose attempt is being sent says so, with no due time and no Retry now", async () => {
    // A long delivery timeout and a receiver that answers only when told: the attempt stays in flight.
    const sendDir = tempDir();
    const sender = await spawnServer({ dataDir: sendDir.path, env: { KLEN_DELIVERY_TIMEOUT: "60s" } });
    const held = await startReceiver({ respond: () => ({ status: 200, hang: true }) });
    let other: Page | undefined;
    try {
      const { agentId: agent } = await setupAccount(sender.api, { endpointUrl: held.url });
      const c = await sender.api.post("/v1/calls", {
        agent_id: agent,
        type: "inbound",
        phone_number: "+15550004002",
      });
      assert.equal((await sender.api.post(`/v1/calls/${c.body.id}/start`, {})).status, 200);
      await held.waitForCount(1);
      const d = (await sender.api.get(`/v1/deliveries?call_id=${c.body.id}`)).body.data[0] as {
        id: string;
        sending_since: string | null;
      };
      assert.ok(d.sending_since, "in flight");

      other = await deliveriesTabOf(sender);
      const cell = other
        .locator(`tr.delivery[data-delivery="${d.id}"]`)
        .getByText("sending", { exact: true });
      await cell.waitFor();
      assert.match((await cell.getAttribute("title"))!, /^Being sent since /);
      await other.getByRole("button", { name: `Attempts of ${d.id}` }).click();
      const detail = other.locator(`tr.delivery[data-delivery="${d.id}"] + tr.detail`);
      await detail.getByText(/^being sent since /).waitFor();
      await detail.getByText(/^First attempt being sent since /).waitFor();
      assert.equal(await detail.getByText(/First attempt due/).count(), 0);
      // The API would refuse it (409 delivery_in_flight): the page does not offer it.
      assert.equal(await detail.getByRole("button", { name: "Retry now" }).count(), 0);
    } finally {
      await other?.close();
      await sender.kill("SIGKILL");
      await held.close();
      sendDir.remove();
    }
  });

  test("Add endpoint can be cancelled; the overview links to every endpoint", async () => {
    const count = async () => (await server.api.get("/v1/endpoints?limit=100")).body.data.length as number;
    const before = await count();
    await section("Endpoints");
    await page.getByRole("link", { name: "Add endpoint" }).click();
    await page.getByLabel("Endpoint URL").fill(`${receiver.url}/never`);
    await page.getByRole("link", { name: "Cancel" }).click();
    await page.getByRole("heading", { name: "Endpoints", level: 1 }).waitFor();
    assert.equal(new URL(page.url()).hash, "#/endpoints");
    assert.equal(await count(), before, "nothing was created");

    await section("Overview");
    await page.getByRole("link", { name: "All endpoints →" }).click();
    await page.getByRole("heading", { name: "Endpoints", level: 1 }).waitFor();
    assert.equal(new URL(page.url()).hash, "#/endpoints");
  });

  test("user data renders as text, never as markup", async () => {
    await section("Endpoints");
    await page.getByRole("link", { name: "Add endpoint" }).click();
    await page.getByLabel("Endpoint URL").fill(`${receiver.url}/xss?q="><script>alert(2)</script>`);
    await page.getByLabel("Description").fill(XSS);
    await page.getByRole("button", { name: "Create endpoint" }).click();
    await page.getByRole("heading", { name: XSS }).waitFor();
    await section("Endpoints");
    await page.getByText(XSS, { exact: true }).waitFor();
    assert.equal(await page.locator("main img, main script").count(), 0);
    assert.deepEqual(dialogs, []);
  });

  test("a long URL and description wrap or are cut, so nothing scrolls sideways", async () => {
    const url = `${receiver.url}/hooks/${"very-long-path-segment-".repeat(60)}?q=${"x".repeat(300)}`;
    const description = "A very long description ".repeat(42).slice(0, 1000);
    const long = await server.api.post("/v1/endpoints", { url, description });
    assert.equal(long.status, 201);
    const noSidewaysScroll = async (where: string) => {
      const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
      assert.ok(scroll <= width, `${where}: page ${scroll} px wide in a ${width} px window`);
    };

    await section("Overview");
    await page.getByRole("heading", { name: "Overview" }).waitFor();
    await section("Endpoints");
    const row = page.locator(`tr[data-endpoint="${long.body.id}"]`);
    await row.waitFor();
    await noSidewaysScroll("endpoints list");
    const [wrapScroll, wrapWidth] = await page
      .locator(".table-wrap")
      .evaluate((el) => [el.scrollWidth, el.clientWidth]);
    assert.ok(wrapScroll <= wrapWidth, `endpoints table ${wrapScroll} px wide in ${wrapWidth} px`);
    const created = (await row.locator("td").last().boundingBox())!;
    assert.ok(created.x + created.width <= 1280, "the Created column is on screen");

    await row.getByRole("link").click();
    const title = page.getByRole("heading", { level: 1 });
    await title.filter({ hasText: "A very long description" }).waitFor();
    await noSidewaysScroll("endpoint page");
    assert.ok((await title.boundingBox())!.height < 100, "the description is cut to two lines");
    assert.equal(await title.locator("[title]").getAttribute("title"), description, "all of it on hover");

    await section("Deliveries");
    const select = page.locator('select[name="endpoint_id"]'); // not the endpoint page's "Endpoint URL"
    await select.waitFor();
    await noSidewaysScroll("deliveries page");
    assert.ok((await select.boundingBox())!.width <= 400, "the endpoint filter is not stretched by URLs");

    await page.setViewportSize({ width: 390, height: 844 });
    try {
      await noSidewaysScroll("deliveries page, 390 px");
      await page.evaluate((id) => {
        location.hash = `#/endpoints/${id}`;
      }, long.body.id);
      await title.filter({ hasText: "A very long description" }).waitFor();
      await noSidewaysScroll("endpoint page, 390 px");
      // One event, as a delivery's event link opens it.
      const event = (await server.api.get("/v1/events?event_type=call.transcript&limit=1")).body.data[0];
      await page.evaluate((id) => {
        location.hash = `#/events?event_id=${id}`;
      }, event.id);
      await page.getByRole("table", { name: "Event" }).waitFor();
      await noSidewaysScroll("one event's page, 390 px");
    } finally {
      await page.setViewportSize({ width: 1280, height: 900 });
    }
  });

  test("an Overview refresh that fails keeps the figures shown, greyed and said to be old", async () => {
    await section("Overview");
    const tiles = page.locator(".tiles");
    await tiles.getByText("Success rate").waitFor();
    await page.route("**/v1/stats/deliveries*", (route) => route.abort());
    try {
      await page.getByRole("button", { name: "Refresh" }).click();
      await page.getByText(/^Could not refresh \(.*\): the figures above are from before\.$/).waitFor();
      assert.equal(await tiles.getAttribute("class"), "tiles stale");
      await tiles.getByText("Success rate").waitFor();
    } finally {
      await page.unroute("**/v1/stats/deliveries*");
    }
    await page.getByRole("button", { name: "Refresh" }).click();
    await page.locator(".tiles:not(.stale)").waitFor();
  });

  test("a long account name is cut in the sidebar; Sign out stays on screen", async () => {
    const before = (await server.api.get("/v1/account")).body.name as string;
    const name = "Northwind-Traders-Customer-Success-EMEA-and-APAC-Operations";
    assert.equal((await server.api.patch("/v1/account", { name })).status, 200);
    await section("Overview");
    try {
      for (const width of [1280, 390]) {
        await page.setViewportSize({ width, height: 844 });
        await page.reload();
        const shown = page.locator(".account-name");
        await shown.filter({ hasText: name }).waitFor();
        const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, innerWidth]);
        assert.ok(scroll <= inner, `${width} px: page ${scroll} px wide`);
        const signOut = (await page.getByRole("button", { name: "Sign out" }).boundingBox())!;
        assert.ok(
          signOut.x + signOut.width <= width,
          `${width} px: Sign out ends at ${signOut.x + signOut.width}`,
        );
        const box = (await shown.boundingBox())!;
        if (width === 1280) {
          const sidebar = (await page.locator(".sidebar").boundingBox())!;
          assert.ok(box.x + box.width <= sidebar.x + sidebar.width, "the name stays in the sidebar");
        }
      }
    } finally {
      await page.setViewportSize({ width: 1280, height: 900 });
      assert.equal((await server.api.patch("/v1/account", { name: before })).status, 200);
      await page.reload();
    }
  });

  test("on a phone, an open delivery's Retry now and response body are on screen", async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    try {
      await page.evaluate(() => {
        location.hash = "#/deliveries?status=succeeded";
      });
      await page.getByRole("heading", { name: "Deliveries" }).waitFor();
      const row = page.locator('tr.delivery[data-status="succeeded"]').first();
      await row.getByRole("button", { name: /^Attempts of / }).click();
      const detail = page.locator("tr.delivery.open + tr.detail");
      // Where the attempt went and what it sent, behind its URL.
      const attempt = detail.locator("tr.attempt").first();
      await attempt.locator("details.request summary").click();
      const headers = attempt.getByLabel(/^Request headers of attempt /);
      assert.equal(await attempt.getByText(/^The first 8 KiB/).count(), 0, "a short answer is whole");
      assert.match((await headers.textContent())!, /^webhook-id: evt_\S+$/m);
      assert.match((await headers.textContent())!, /^webhook-signature: v1,\S+$/m);
      for (const [what, el] of [
        ["Retry now", detail.getByRole("button", { name: "Retry now" })],
        ["the response body", attempt.locator('td[data-label="Response body"] pre')],
        ["the request headers", headers],
      ] as const) {
        const box = (await el.boundingBox())!;
        assert.ok(box.x >= 0 && box.x + box.width <= 390, `${what} at x ${box.x}–${box.x + box.width}`);
      }
    } finally {
      await page.setViewportSize({ width: 1280, height: 900 });
    }
  });

  test("long lists page with Load more", async () => {
    for (let i = 0; i < 6; i++) await runCall(server.api, agentId, `+1555000${1000 + i}`);
    const total = await countAll("/v1/events");
    assert.ok(total > 25, `${total} events`);
    await section("Events");
    const rows = page.locator("tr.event");
    await waitFor("the first page of events", async () => (await rows.count()) === 25);
    // A Load more that fails says so and keeps its button, which then asks for that page again
    // (no Try again, which would load the first page over the rows shown).
    await page.route("**/v1/events?*cursor=*", (r) => r.abort("connectionrefused"));
    try {
      await page.getByRole("button", { name: "Load more" }).click();
      await page.getByText(/^Cannot reach the server/).waitFor();
    } finally {
      await page.unroute("**/v1/events?*cursor=*");
    }
    assert.equal(await page.getByRole("button", { name: "Try again" }).count(), 0);
    assert.equal(await rows.count(), 25);
    await page.getByRole("button", { name: "Load more" }).click();
    await waitFor(`all ${total} events`, async () => (await rows.count()) === total);
    await page.getByRole("button", { name: "Load more" }).waitFor({ state: "hidden" });
  });

  test("the Deliveries endpoint filter offers every endpoint, past the first page of 100", async () => {
    const oldest = await server.api.post("/v1/endpoints", {
      url: `${receiver.url}/oldest-of-many`,
      description: "Oldest of many",
    });
    for (let i = 0; i < 100; i++)
      assert.equal(
        (await server.api.post("/v1/endpoints", { url: `${receiver.url}/many/${i}` })).status,
        201,
      );
    await section("Deliveries");
    const filter = page.locator('select[name="endpoint_id"]');
    await filter.locator(`option[value="${oldest.body.id}"]`).waitFor({ state: "attached" });
    const listed = (await server.api.get("/v1/endpoints?limit=100")).body;
    assert.ok(listed.next_cursor, "more than one page of endpoints");
    await filter.selectOption(oldest.body.id);
    await page.waitForURL(new RegExp(`endpoint_id=${oldest.body.id}`));
  });

  test("the Deliveries endpoint filter tells apart endpoints with the same URL", async () => {
    const url = `${receiver.url}/twice`;
    const described = await server.api.post("/v1/endpoints", { url, description: "CRM sync" });
    const plain = await server.api.post("/v1/endpoints", { url });
    assert.equal((await server.api.patch(`/v1/endpoints/${plain.body.id}`, { disabled: true })).status, 200);
    await section("Endpoints");
    await section("Deliveries");
    const filter = page.locator('select[name="endpoint_id"]');
    // The label's user text sits in bidi isolates (U+2068 … U+2069), left out here.
    const label = async (id: string) =>
      (await filter.locator(`option[value="${id}"]`).textContent())!.replace(/[\u2068\u2069]/g, "");
    await filter.locator(`option[value="${plain.body.id}"]`).waitFor({ state: "attached" });
    assert.equal(await label(described.body.id), `${url} — CRM sync · …${described.body.id.slice(-6)}`);
    assert.equal(await label(plain.body.id), `${url} · …${plain.body.id.slice(-6)} (disabled)`);
    await filter.selectOption(plain.body.id);
    await page.waitForURL(new RegExp(`endpoint_id=${plain.body.id}`));
  });

  test("Created before narrows deliveries and events to older ones, and stays in the link", async () => {
    await runCall(server.api, agentId, "+15550002001");
    // The next call's events in a later second than every earlier one (the control takes seconds).
    await new Promise((r) => setTimeout(r, 1_100));
    await runCall(server.api, agentId, "+15550002002");
    const newest = (await server.api.get("/v1/deliveries?limit=1")).body.data[0].created_at as string;
    const instant = new Date(Math.floor(Date.parse(newest) / 1000) * 1000).toISOString();
    // The same instant as the browser's local date and time, which the control holds.
    const local = await page.evaluate((iso) => {
      const d = new Date(iso);
      const p = (n: number) => String(n).padStart(2, "0");
      return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
    }, instant);
    for (const [name, path, rowSelector, idOf] of [
      ["Deliveries", "/v1/deliveries", "tr.delivery", "data-delivery"],
      ["Events", "/v1/events", "tr.event", "data-event"],
    ] as const) {
      const limit = name === "Events" ? 25 : 20;
      const expected = (await server.api.get(`${path}?limit=${limit}&before=${instant}`)).body.data.map(
        (x: { id: string; created_at: string }) => {
          assert.ok(x.created_at < instant);
          return x.id;
        },
      );
      const latest = (await server.api.get(`${path}?limit=1`)).body.data[0].id;
      assert.ok(expected.length > 0 && !expected.includes(latest), `${name}: older ones only`);
      await section(name);
      await page.locator(`${rowSelector}[${idOf}="${latest}"]`).waitFor();
      await page.getByLabel("Created before").fill(local);
      await page.getByRole("button", { name: "Filter", exact: true }).click();
      await page.waitForURL((u) => new URLSearchParams(u.hash.split("?")[1]).get("before") === instant);
      const rows = page.locator(rowSelector);
      await waitFor(`${name} before ${instant}`, async () => {
        const ids = await rows.evaluateAll((els, a) => els.map((e) => e.getAttribute(a)), idOf);
        return JSON.stringify(ids) === JSON.stringify(expected) ? true : undefined;
      });
      // Opened from the link, the control shows the instant again.
      await page.reload();
      await page.locator(`${rowSelector}[${idOf}="${expected[0]}"]`).waitFor();
      // (Chromium leaves ":00" seconds out of the value.)
      assert.equal(Date.parse(await page.getByLabel("Created before").inputValue()), Date.parse(local));
      // Another filter changed: a linked instant stays exactly as it was (its milliseconds too).
      if (name === "Deliveries") {
        const exact = instant.replace(".000Z", ".123Z");
        await page.evaluate((b) => {
          location.hash = `#/deliveries?before=${b}`;
        }, exact);
        // (Its first row, which may be newer than the instant's: a call fans out to 100 endpoints.)
        const first = (await server.api.get(`/v1/deliveries?limit=1&before=${exact}`)).body.data[0].id;
        await page.locator(`${rowSelector}[${idOf}="${first}"]`).waitFor();
        await page.getByLabel("Status").selectOption("succeeded");
        await page.waitForURL((u) => new URLSearchParams(u.hash.split("?")[1]).get("status") === "succeeded");
        assert.equal(new URLSearchParams(page.url().split("?")[1]).get("before"), exact);
      }
    }
  });

  test("Back returns to a list as it was: its pages, its open rows and the scroll; a link starts afresh", async () => {
    while ((await countAll("/v1/deliveries")) <= 40) await runCall(server.api, agentId, "+15550003001");
    await section("Events");
    await section("Deliveries");
    const rows = page.locator("tr.delivery");
    await waitFor("the first page", async () => (await rows.count()) === 20);
    await page.getByRole("button", { name: "Load more" }).click();
    await waitFor("two pages", async () => (await rows.count()) === 40);
    const row = rows.nth(30);
    const id = await row.getAttribute("data-delivery");
    await row.locator(".expander").click();
    await row.locator("a[href^='#/calls/']").scrollIntoViewIfNeeded();
    const scrolled = await page.evaluate(() => window.scrollY);
    assert.ok(scrolled > 0, "scrolled down to the second page");
    await row.locator("a[href^='#/calls/']").click();
    await page.waitForURL(/#\/calls\/\d+$/);
    await page.getByRole("heading", { level: 1, name: /Call/ }).waitFor();

    await page.goBack();
    await waitFor("both pages again", async () => (await rows.count()) === 40);
    const again = page.locator(`tr.delivery[data-delivery="${id}"]`);
    assert.equal(await again.locator(".expander").getAttribute("aria-expanded"), "true");
    assert.equal(
      await again.locator("xpath=following-sibling::tr[1]").isVisible(),
      true,
      "its attempts shown",
    );
    await waitFor("the same scroll", async () =>
      (await page.evaluate(() => window.scrollY)) === scrolled ? true : undefined,
    );

    // A link to the same list is a new visit: one page, nothing open.
    await section("Events");
    await section("Deliveries");
    await waitFor("one page", async () => (await rows.count()) === 20);
    assert.equal(await page.locator("tr.delivery .expander[aria-expanded='true']").count(), 0);
  });

  test("a list left while it was still loading keeps nothing in the next list's memory", async () => {
    // The first of these lists waits 1.5 s for its endpoints; meanwhile the second one is shown and
    // paged. The first then builds its table, under the history entry that is now current.
    let delayed = 0;
    let release: () => void = () => {};
    const held = new Promise<void>((r) => {
      release = r;
    });
    await page.route("**/v1/endpoints?**", async (route) => {
      if (delayed++ === 0) await held;
      return route.continue();
    });
    try {
      await section("Events");
      await page.evaluate(() => {
        location.hash = "#/deliveries?status=succeeded";
      });
      await waitFor("the first list's endpoints requested", () => delayed >= 1);
      await page.evaluate(() => {
        location.hash = "#/deliveries";
      });
      const rows = page.locator("tr.delivery");
      await waitFor("the second list", async () => (await rows.count()) === 20);
      await page.getByRole("button", { name: "Load more" }).click();
      await waitFor("its two pages", async () => (await rows.count()) === 40);
      // The first list goes on now, off screen, and loads its page.
      const stale = page.waitForResponse(
        (r) => r.url().includes("/v1/deliveries?") && r.url().includes("status=succeeded"),
      );
      release();
      await stale;
      await section("Events");
      await page.goBack();
      await waitFor("the second list's two pages again", async () => (await rows.count()) === 40);
    } finally {
      release();
      await page.unroute("**/v1/endpoints?**");
    }
  });

  test("a Refresh that fails while rows are shown says so above them, and a later one clears it", async () => {
    await section("Events");
    await page.locator("table tbody tr").first().waitFor();
    const stale = page.locator(".table-stale");
    await page.route("**/v1/events?**", (r) => r.abort("connectionrefused"));
    try {
      await page.getByRole("button", { name: "Refresh" }).click();
      await stale.filter({ hasText: "Could not refresh" }).waitFor();
      assert.match((await stale.textContent()) ?? "", /the rows below are from before/);
      assert.ok((await page.locator("table tbody tr").count()) > 0, "the rows stay");
    } finally {
      await page.unroute("**/v1/events?**");
    }
    await page.getByRole("button", { name: "Refresh" }).click();
    await stale.waitFor({ state: "hidden" });
  });

  test("a page the server could not answer keeps its heading and offers to try again", async () => {
    await page.route("**/v1/**", (r) => r.abort("connectionrefused"));
    try {
      await page.evaluate((id) => {
        location.hash = `#/endpoints/${id}`;
      }, endpointId);
      await page.getByRole("alert").waitFor();
      assert.equal(await page.getByRole("heading", { level: 1 }).textContent(), "Endpoints");
    } finally {
      await page.unroute("**/v1/**");
    }
    await page.getByRole("button", { name: "Try again" }).click();
    await page.getByRole("heading", { name: "CRM sync (edited)" }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Try again" }).count(), 0);
  });

  test("a delivery failed because its endpoint was disabled says so, and how to send it", async () => {
    const ep = await server.api.post("/v1/endpoints", {
      url: `${failing.url}/switched-off`,
      description: "Switched off",
      event_types: ["call.failed"],
    });
    const call = await server.api.post("/v1/test-calls", { endpoint_id: ep.body.id, outcome: "busy" });
    const d = await waitFor("the failed first attempt", async () => {
      const r = await server.api.get(`/v1/deliveries?call_id=${call.body.call_id}`);
      return r.body.data[0]?.attempts.length === 1
        ? (r.body.data[0] as { id: string; event_id: string })
        : undefined;
    });
    assert.equal((await server.api.patch(`/v1/endpoints/${ep.body.id}`, { disabled: true })).status, 200);
    // Its next retry is 10 minutes away: what the dispatcher does when it comes due (it settles the
    // delivery, the endpoint being disabled) is written here directly.
    const db = new Database(`${dir.path}/klen.db`);
    db.prepare("UPDATE deliveries SET status = 'failed', last_error = 'endpoint_disabled' WHERE id = ?").run(
      d.id,
    );
    db.close();

    await page.evaluate((id) => {
      location.hash = `#/deliveries?event_id=${id}`;
    }, d.event_id);
    const row = page.locator(`tr.delivery[data-delivery="${d.id}"]`);
    await row.getByText("not sent: the endpoint was disabled").waitFor();
    await page.getByRole("button", { name: `Attempts of ${d.id}` }).click();
    const detail = page.locator(`tr.delivery[data-delivery="${d.id}"] + tr.detail`);
    await detail
      .getByText("Not sent: the endpoint was disabled when it came due. Enable the endpoint")
      .waitFor();
    await detail.locator('tr.attempt[data-number="1"]').waitFor();
    await detail.getByRole("button", { name: "Retry now" }).click();
    await detail
      .getByText("Its endpoint is disabled: enable the endpoint on its page, then retry.")
      .waitFor();
  });

  test("a recover run in the background shows its progress to the end", async () => {
    const ep = await server.api.post("/v1/endpoints", { url: `${receiver.url}/recovered` });
    const call = await server.api.post("/v1/test-calls", { endpoint_id: ep.body.id });
    const sent = await waitFor("the test call's deliveries sent", async () => {
      const r = await server.api.get(`/v1/deliveries?call_id=${call.body.call_id}&status=succeeded`);
      return r.body.data.length >= 3 ? (r.body.data as Array<{ id: string }>) : undefined;
    });
    // What a long outage leaves: deliveries that gave up (written here directly).
    const db = new Database(`${dir.path}/klen.db`);
    const failed = db
      .prepare("UPDATE deliveries SET status = 'failed' WHERE endpoint_id = ? AND status = 'succeeded'")
      .run(ep.body.id).changes;
    db.close();
    assert.ok(failed >= sent.length, "more than KLEN_RECOVER_BATCH (1)");
    await page.evaluate((id) => {
      location.hash = `#/endpoints/${id}`;
    }, ep.body.id);
    const recover = page.getByRole("button", { name: "Recover failed deliveries" });
    await recover.click();
    // Shown for the second before the page first asks how the job is doing; meanwhile a second
    // press cannot start a second job.
    await page.getByText(`Found ${failed} deliveries: queuing them in the background…`).waitFor();
    assert.equal(await recover.isDisabled(), true, "off while the job is followed");
    await page.getByText(`Queued ${failed} deliveries for another attempt.`).waitFor();
    await page.locator("button:not([disabled])", { hasText: "Recover failed deliveries" }).waitFor();
    const jobs = await server.api.get(`/v1/recover-jobs?endpoint_id=${ep.body.id}`);
    assert.deepEqual(
      jobs.body.data.map((j: { status: string; queued: number }) => [j.status, j.queued]),
      [["finished", failed]],
      "carried out in the background, as the page said",
    );
  });

  test("Replay sends an endpoint the events made while it was disabled, once enabled, and says when nothing is missing", async () => {
    // An agent of its own, and call.ended only: one event missing, which fits in the request
    // (KLEN_RECOVER_BATCH is 1).
    const agent = await server.api.post("/v1/agents", {
      name: "Replay Agent",
      assistant_id: "assistant_replay",
    });
    const ep = await server.api.post("/v1/endpoints", {
      url: `${receiver.url}/replayed`,
      description: "Replayed",
      event_types: ["call.ended"],
      agent_ids: [agent.body.id],
    });
    assert.equal((await server.api.patch(`/v1/endpoints/${ep.body.id}`, { disabled: true })).status, 200);
    const call = await runCall(server.api, agent.body.id);
    assert.equal((await server.api.get(`/v1/deliveries?endpoint_id=${ep.body.id}`)).body.data.length, 0);
    await page.evaluate((id) => {
      location.hash = `#/endpoints/${id}`;
    }, ep.body.id);
    await page.getByText("Replay sends the events never sent to this endpoint at all").waitFor();
    await page.getByRole("button", { name: "Replay missing events" }).click();
    await page
      .getByText("This endpoint is disabled: enable it (at the top of this page), then replay.")
      .waitFor();

    await page.getByRole("button", { name: "Enable endpoint" }).click();
    await page.locator(".endpoint-meta .badge", { hasText: "enabled" }).waitFor();
    await page.getByRole("button", { name: "Replay missing events" }).click();
    await page.getByText("Queued 1 event this endpoint never had.").waitFor();
    const made = (await server.api.get(`/v1/deliveries?endpoint_id=${ep.body.id}`)).body.data as Array<{
      id: string;
      call_id: number;
    }>;
    assert.deepEqual(
      made.map((d) => d.call_id),
      [call],
    );
    // The recent deliveries are reloaded: the replayed one is there without a Refresh.
    await page.locator(`tr.delivery[data-delivery="${made[0]!.id}"]`).waitFor();
    await waitFor("the replayed event at the receiver", () =>
      receiver.requests.find((r) => r.path === "/replayed" && r.json?.call?.id === call),
    );
    // Again: it has them all now, and the words say only what its filter takes was looked at.
    await page.getByRole("button", { name: "Replay missing events" }).click();
    await page
      .getByText(/^Nothing missing: this endpoint has a delivery for every event its filter takes since /)
      .waitFor();
    assert.equal((await server.api.get(`/v1/deliveries?endpoint_id=${ep.body.id}`)).body.data.length, 1);
  });

  test("a replay run in the background shows its progress to the end, and the deliveries it made", async () => {
    const agent = await server.api.post("/v1/agents", { name: "Late Agent", assistant_id: "assistant_late" });
    const calls = [await runCall(server.api, agent.body.id), await runCall(server.api, agent.body.id)];
    let events = 0;
    for (const c of calls) events += (await server.api.get(`/v1/events?call_id=${c}`)).body.data.length;
    assert.ok(events > 1, "more than KLEN_RECOVER_BATCH (1)");
    // Made after the calls: every one of their events is missing.
    const ep = await server.api.post("/v1/endpoints", {
      url: `${receiver.url}/late`,
      agent_ids: [agent.body.id],
    });
    await page.evaluate((id) => {
      location.hash = `#/endpoints/${id}`;
    }, ep.body.id);
    // A job of two calls is done before the page first asks: that first answer is made to say it
    // is half way, as a longer one would.
    let polls = 0;
    await page.route("**/v1/recover-jobs/*", async (route) => {
      const real = await route.fetch();
      if (polls++ > 0) return route.fulfill({ response: real });
      return route.fulfill({
        response: real,
        json: { ...(await real.json()), status: "running", queued: 4 },
      });
    });
    try {
      const replay = page.getByRole("button", { name: "Replay missing events" });
      await replay.click();
      await page.getByText("Queuing the missing events in the background…").waitFor();
      assert.equal(await replay.isDisabled(), true, "off while the job is followed");
      assert.equal(
        await page.getByRole("button", { name: "Recover failed deliveries" }).isDisabled(),
        true,
        "the card's other action too: one status line",
      );
      await page.getByText("4 events queued so far…").waitFor();
      await page.getByText(`Queued ${events} events this endpoint never had.`).waitFor();
      await page.locator("button:not([disabled])", { hasText: "Replay missing events" }).waitFor();
    } finally {
      await page.unroute("**/v1/recover-jobs/*");
    }
    const jobs = await server.api.get(`/v1/recover-jobs?endpoint_id=${ep.body.id}`);
    assert.deepEqual(
      jobs.body.data.map((j: { kind: string; status: string; queued: number }) => [
        j.kind,
        j.status,
        j.queued,
      ]),
      [["replay", "finished", events]],
      "carried out in the background, as the page said",
    );
    const made = (await server.api.get(`/v1/deliveries?endpoint_id=${ep.body.id}&limit=100`)).body
      .data as Array<{
      id: string;
      call_id: number;
    }>;
    assert.equal(made.length, events);
    assert.deepEqual(
      [...new Set(made.map((d) => d.call_id))].sort((a, b) => a - b),
      [...calls].sort((a, b) => a - b),
    );
    for (const d of made) await page.locator(`tr.delivery[data-delivery="${d.id}"]`).waitFor();
  });

  test("a call's recording plays and its long transcript opens through links made now", async () => {
    const call = await server.api.post("/v1/calls", {
      agent_id: agentId,
      type: "inbound",
      phone_number: "+15550001111",
    });
    const id = call.body.id as number;
    // Above KLEN_INLINE_LIMIT (64 KiB): stored, and sent as transcript_url.
    const transcript = `Agent: Hello!\n${"Customer: a long answer. ".repeat(3000)}`;
    for (const [step, body] of [
      ["start", {}],
      ["end", {}],
      ["transcript", { transcript }],
    ] as const)
      assert.equal((await server.api.post(`/v1/calls/${id}/${step}`, body)).status, 200, step);
    const wav = synthesizeWav({ seconds: 1, sampleRate: 8000, seed: 9 });
    const upload = await fetch(`${server.url}/v1/calls/${id}/recording`, {
      method: "POST",
      headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "audio/wav" },
      body: new Uint8Array(wav),
    });
    assert.equal(upload.status, 200);

    await page.evaluate((to) => {
      location.hash = to;
    }, `#/calls/${id}`);
    await page.getByRole("heading", { name: `Call #${id}` }).waitFor();
    const recording = page.locator('li.media[data-kind="recording"]');
    // 16,044 bytes: a second of 8 kHz 16-bit audio and its header.
    assert.equal(wav.length, 16_044);
    await recording.getByText("audio/wav · 16 KB").waitFor();
    // The player loads the audio from the page's own origin (KLEN_PUBLIC_URL names localhost):
    // its length is the recording's.
    const player = page.getByLabel(`Recording of call ${id}`);
    assert.match((await player.getAttribute("src"))!, /^\/v1\/blobs\/blb_[\w-]+\?expires=\d+&signature=/);
    const seconds = await player.evaluate(
      (audio: HTMLAudioElement) =>
        new Promise<number>((resolve, reject) => {
          audio.onloadedmetadata = () => resolve(audio.duration);
          audio.onerror = () => reject(new Error(`audio error ${audio.error?.code}`));
          audio.preload = "metadata";
          audio.load();
        }),
    );
    assert.equal(seconds, 1);
    const transcriptItem = page.locator('li.media[data-kind="transcript"]');
    const href = (await transcriptItem.getByRole("link", { name: "Open" }).getAttribute("href"))!;
    const opened = await page.evaluate(async (url) => (await fetch(url)).text(), href);
    assert.equal(opened, transcript);
    assert.equal(await transcriptItem.getByRole("link", { name: "Download" }).getAttribute("href"), href);

    // A call with nothing stored says so.
    await page.evaluate((to) => {
      location.hash = to;
    }, `#/calls/${callId}`);
    await page.getByRole("heading", { name: `Call #${callId}` }).waitFor();
    await page.getByText("No recording yet, and no transcript or summary too long to go inline.").waitFor();

    // The media list failing (a server of an older version has no such route) costs its card only.
    const route = "**/v1/calls/*/media";
    await page.route(route, (r) =>
      r.fulfill({
        status: 404,
        contentType: "application/json",
        body: '{"error":{"code":"not_found","message":"no route GET /v1/calls/1/media"}}',
      }),
    );
    try {
      await page.evaluate((to) => {
        location.hash = to;
      }, `#/calls/${id}`);
      await page.getByRole("heading", { name: `Call #${id}` }).waitFor();
      await page.getByText("Could not load them: no route GET /v1/calls/1/media").waitFor();
      await page.locator('tr.event[data-type="call.recording"]').waitFor();
      assert.equal(await page.locator("li.media").count(), 0);
    } finally {
      await page.unroute(route);
    }
  });

  test("creating an endpoint with Enter leads to its page with focus on its heading", async () => {
    await page.evaluate(() => {
      location.hash = "#/endpoints/new";
    });
    await page.getByLabel("Endpoint URL").fill(`${receiver.url}/entered`);
    await page.getByLabel("Description").fill("Made by Enter");
    await page.getByLabel("Description").press("Enter");
    await page.getByRole("heading", { name: "Made by Enter" }).waitFor();
    await waitFor("focus on the new endpoint's heading", () =>
      page.evaluate(() => document.activeElement?.tagName === "H1"),
    );
    const id = new URL(page.url()).hash.split("/")[2]!;
    assert.equal((await server.api.del(`/v1/endpoints/${id}`)).status, 200);
  });

  test("deletes an endpoint after a second click, then lists the endpoints without it", async () => {
    const made = await server.api.post("/v1/endpoints", {
      url: `${receiver.url}/to-delete`,
      description: "To delete",
    });
    assert.equal(made.status, 201);
    await page.goto(`${server.url}/#/endpoints/${made.body.id}`);
    const del = page.getByRole("button", { name: "Delete endpoint" });
    await del.click();
    await page.getByText("Click Confirm delete to delete this endpoint").waitFor();
    assert.equal((await server.api.get(`/v1/endpoints/${made.body.id}`)).status, 200, "one click only asks");
    await page.locator("button[data-armed=ready]", { hasText: "Confirm delete" }).click();
    await page.waitForURL(/#\/endpoints$/);
    assert.equal((await server.api.get(`/v1/endpoints/${made.body.id}`)).status, 404);
    await page.getByRole("heading", { name: "Endpoints", exact: true }).waitFor();
    assert.equal(await page.getByText("To delete").count(), 0);
    // Its deliveries filtered by it: the filter says which endpoint, and that it is deleted.
    await page.goto(`${server.url}/#/deliveries?endpoint_id=${made.body.id}`);
    const filter = page.locator('select[name="endpoint_id"]');
    await filter.locator(`option[value="${made.body.id}"]`).waitFor({ state: "attached" });
    assert.equal(await filter.inputValue(), made.body.id);
    assert.equal(
      await filter.locator(`option[value="${made.body.id}"]`).textContent(),
      `${made.body.id} (deleted)`,
    );
  });

  test("a list whose first page could not be loaded says why and offers to try again", async () => {
    await page.route("**/v1/events?**", (r) => r.abort("connectionrefused"));
    try {
      await section("Events");
      await page.getByText(/^Cannot reach the server/).waitFor();
    } finally {
      await page.unroute("**/v1/events?**");
    }
    await page.getByRole("button", { name: "Try again" }).click();
    await page.locator("table tbody tr").first().waitFor();
    assert.equal(await page.getByRole("button", { name: "Try again" }).count(), 0);
  });

  test("settings: renames the account, turns on auto summary, creates an API key once and revokes the old one", async () => {
    await section("Settings");
    await page.getByLabel("Account name").fill("Acme Voice");
    await page.getByLabel(/auto summary/).check();
    await page.getByRole("button", { name: "Save account" }).click();
    await page.getByText("Saved.").waitFor();
    await page.locator(".account-name").filter({ hasText: "Acme Voice" }).waitFor();
    const acct = await server.api.get("/v1/account");
    assert.deepEqual([acct.body.name, acct.body.auto_summary], ["Acme Voice", true]);

    // One key: nothing to revoke. A new key is shown once and works.
    assert.equal(await page.getByRole("button", { name: /^Revoke/ }).count(), 0);
    await page.getByRole("button", { name: "Create API key" }).click();
    const shown = page.getByLabel("New API key");
    await shown.waitFor();
    const key = (await shown.textContent())!;
    assert.match(key, /^klen_sk_/);
    await page.getByRole("button", { name: "Copy API key" }).click();
    await page.getByRole("button", { name: "Copy API key: copied" }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key);
    const fresh = apiClient(server.url, key);
    assert.equal((await fresh.get("/v1/account")).body.name, "Acme Voice");
    await page.locator("tr.api-key").nth(1).waitFor();
    assert.ok(!(await page.locator("table[aria-label='API keys']").textContent())!.includes(key));

    // A second new key, revoked at once: the box that showed it no longer offers it.
    await page.getByRole("button", { name: "Create API key" }).click();
    const secondKey = page.getByLabel("New API key").filter({ hasNotText: key });
    await secondKey.waitFor();
    // Its row, by the 12 characters of its prefix (generated keys).
    const second = page
      .locator("tr.api-key")
      .filter({ hasText: (await secondKey.textContent())!.slice(0, 12) });
    await second.waitFor();
    await second.getByRole("button", { name: /^Revoke/ }).click();
    await second.locator("button[data-armed=ready]").click();
    await page.getByText(/revoked: it no longer signs in/).waitFor();
    assert.equal(await page.getByLabel("New API key").count(), 0);
    assert.equal(await page.getByRole("button", { name: "Copy API key" }).count(), 0);

    // Revoking the key this tab is signed in with takes a second click, then signs out; the two
    // clicks of a double-click only ask.
    const inUse = page.locator("tr.api-key").filter({ hasText: "this session" });
    // Armed, the button is named for what its next press does; Escape takes the question back.
    const revoke = inUse.getByRole("button", { name: /^Revoke/ });
    await revoke.click();
    const armed = inUse.getByRole("button", { name: /^Confirm revoke: Revoke key / });
    await armed.waitFor();
    await armed.press("Escape");
    await inUse.getByRole("button", { name: /^Revoke key / }).waitFor();
    assert.equal(await inUse.locator("button[data-armed]").count(), 0);
    await inUse.getByRole("button", { name: /^Revoke/ }).dblclick();
    await page.getByText("is the key this tab is signed in with").waitFor();
    assert.equal((await server.api.get("/v1/account")).status, 200, "a double-click only asks");
    await inUse.locator("button[data-armed=ready]").click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
    assert.equal((await server.api.get("/v1/account")).status, 401);
    assert.equal(await page.evaluate(() => sessionStorage.getItem("klen.apiKey")), null);
  });

  test("the page made no request to another origin and threw no error", () => {
    assert.deepEqual(foreignRequests, []);
    assert.deepEqual(pageErrors, []);
  });
});
