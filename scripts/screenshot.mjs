// Regenerates docs/dashboard.png: starts the real server on a temporary SQLite database, sends it
// realistic traffic (three endpoints on loopback receivers: healthy, flaky and down), then signs in
// to the dashboard in headless Chromium and captures the overview.
//
//   npm run build && node scripts/screenshot.mjs [out.png]
//
// Needs Debian's `chromium` (apt-get install chromium). Takes about four minutes, because the
// chart plots real attempts over real time. SCREENSHOT_TRAFFIC_SECONDS shortens or lengthens that.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = resolve(fileURLToPath(import.meta.url), "../..");
const out = resolve(process.argv[2] ?? join(root, "docs/dashboard.png"));
const trafficMs = Number(process.env.SCREENSHOT_TRAFFIC_SECONDS ?? 210) * 1000;
const apiKey = "klen_live_demo_7f3a9c2e5b814d06";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((res) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

/** A loopback receiver answering `status()` after `delay()` ms. */
async function receiver(status, delay, body) {
  const server = createServer((req, res) => {
    req.resume();
    req.on("end", () =>
      setTimeout(() => {
        const code = status();
        res.writeHead(code, { "content-type": "text/plain" });
        res.end(code < 300 ? "ok" : body);
      }, delay()),
    );
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, server };
}

async function main() {
  const dataDir = mkdtempSync(join(tmpdir(), "klen-screenshot-"));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const proc = spawn(process.execPath, [join(root, "packages/server/dist/src/cli/main.js"), "serve"], {
    env: {
      ...process.env,
      PORT: String(port),
      KLEN_HOST: "127.0.0.1",
      KLEN_DATA_DIR: dataDir,
      KLEN_API_KEY: apiKey,
      KLEN_DEV: "1",
      KLEN_RETRY_SCHEDULE: "1s,2s",
      KLEN_DELIVERY_TIMEOUT: "2s",
      LOG_LEVEL: "warn",
    },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const receivers = [];
  let browser;
  try {
    for (let i = 0; ; i++) {
      const ok = await fetch(`${base}/healthz`).then(
        (r) => r.ok,
        () => false,
      );
      if (ok) break;
      if (i > 200) throw new Error("server did not start");
      await sleep(50);
    }
    const api = async (method, path, body) => {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: {
          authorization: `Bearer ${apiKey}`,
          ...(body ? { "content-type": "application/json" } : {}),
        },
        body: body ? JSON.stringify(body) : undefined,
      });
      const json = await res.json();
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
      return json;
    };

    const jitter = (lo, hi) => () => lo + Math.random() * (hi - lo);
    const healthy = await receiver(() => 200, jitter(15, 90));
    const flaky = await receiver(
      () => (Math.random() < 0.15 ? 503 : 200),
      jitter(40, 260),
      "Service Unavailable",
    );
    const down = await receiver(() => 500, jitter(5, 30), '{"error":"database connection refused"}');
    receivers.push(healthy, flaky, down);

    await api("PATCH", "/v1/account", { name: "Acme Dental Group" }).catch(() => {});
    const support = await api("POST", "/v1/agents", { name: "Front Desk", assistant_id: "asst_frontdesk" });
    const sales = await api("POST", "/v1/agents", { name: "Recall Reminders", assistant_id: "asst_recall" });
    await api("POST", "/v1/endpoints", {
      url: `${down.url}/zapier/hooks/catch/1849/abc`,
      description: "Legacy Zapier hook",
      event_types: ["call.ended", "call.failed"],
    });
    await api("POST", "/v1/endpoints", {
      url: `${flaky.url}/ingest/klen`,
      description: "Analytics warehouse",
      event_types: ["call.ended", "call.summary", "call.failed"],
    });
    await api("POST", "/v1/endpoints", {
      url: `${healthy.url}/webhooks/klen`,
      description: "Production CRM sync",
      headers: { "X-Team": "voice" },
    });

    const phones = ["+14155550132", "+14155550187", "+12125550143", "+13105550199", "+16175550110"];
    const reasons = ["no-answer", "busy", "disconnected"];
    const started = Date.now();
    let n = 0;
    while (Date.now() - started < trafficMs) {
      const agent = n % 3 === 0 ? sales : support;
      const call = await api("POST", "/v1/calls", {
        agent_id: agent.id,
        type: n % 2 ? "outbound" : "inbound",
        phone_number: phones[n % phones.length],
        klen_call_id: `call_${(0x5a3c1 + n * 7919).toString(16)}`,
      });
      if (n % 7 === 3) {
        await api("POST", `/v1/calls/${call.id}/fail`, { failure_reason: reasons[n % reasons.length] });
      } else {
        await api("POST", `/v1/calls/${call.id}/start`, {});
        await api("POST", `/v1/calls/${call.id}/end`, {
          summary: "Patient rescheduled a cleaning to Thursday.",
        });
        await api("POST", `/v1/calls/${call.id}/transcript`, {
          transcript: "Agent: Thanks for calling Acme Dental.\nCaller: I need to move my appointment.",
        });
        await api("POST", `/v1/calls/${call.id}/summary`, {
          summary: "The caller moved a cleaning appointment from Tuesday to Thursday at 10am.",
        });
      }
      n++;
      await sleep(1500 + Math.random() * 2500);
    }
    // Let every delivery finish (succeed, or fail after its last retry).
    for (;;) {
      const pending = await api("GET", "/v1/deliveries?status=pending&limit=1");
      if (pending.data.length === 0) break;
      await sleep(250);
    }

    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
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
    const page = await browser.newPage({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
    await page.goto(base);
    await page.getByLabel("API key").fill(apiKey);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByLabel("Time range").selectOption("5m");
    await page.locator("svg.chart .bar-ok").first().waitFor();
    const failed = page.locator("tr.delivery[data-status=failed]").first();
    await failed.getByRole("button", { name: /^Attempts of/ }).click();
    await page.locator("tr.attempt").first().waitFor();
    await page.mouse.move(0, 0);
    await page.screenshot({ path: out, fullPage: true });
    console.log(`wrote ${out} (${n} calls)`);
    // For reviewing the other pages: SCREENSHOT_PAGES_DIR=/tmp/pages writes one PNG per page.
    const pagesDir = process.env.SCREENSHOT_PAGES_DIR;
    if (pagesDir) {
      const shots = [
        ["endpoints", "#/endpoints", "tr[data-endpoint]"],
        ["deliveries", "#/deliveries", "tr.delivery"],
        ["events", "#/events", "tr.event"],
        ["calls", "#/calls", "tr.call"],
      ];
      for (const [name, hash, ready] of shots) {
        await page.goto(`${base}/${hash}`);
        await page.locator(ready).first().waitFor();
        if (name === "events") await page.locator("tr.event .expander").first().click();
        await page.screenshot({ path: join(pagesDir, `${name}.png`), fullPage: true });
      }
      await page.goto(`${base}/#/endpoints`);
      await page.locator("tr[data-endpoint] a").first().click();
      await page.getByRole("button", { name: "Reveal" }).click();
      await page.locator("tr.delivery").first().waitFor();
      await page.screenshot({ path: join(pagesDir, "endpoint.png"), fullPage: true });
      await page.goto(`${base}/#/calls/1`);
      await page.locator("tr.event").first().waitFor();
      await page.screenshot({ path: join(pagesDir, "call.png"), fullPage: true });
      await page.setViewportSize({ width: 420, height: 900 });
      await page.goto(`${base}/#/overview`);
      await page.locator("svg.chart").waitFor();
      await page.screenshot({ path: join(pagesDir, "narrow.png"), fullPage: false });
      await page.evaluate(() => sessionStorage.clear());
      await page.setViewportSize({ width: 1000, height: 700 });
      await page.goto(`${base}/`);
      await page.reload();
      await page.getByLabel("API key").waitFor();
      await page.screenshot({ path: join(pagesDir, "signin.png") });
    }
  } finally {
    await browser?.close();
    proc.kill("SIGTERM");
    for (const r of receivers) r.server.close();
    await new Promise((r) => proc.once("exit", r));
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
