// Drives the web dashboard in Debian's headless Chromium (playwright-core,
// no downloaded browser): the page loads, its tiles show the numbers of
// /api/v1/dashboard/metrics for the same as_of, and they move when new
// events are posted; the percentile chart is drawn for one symbol with
// labelled axes; the page logs no console error. With API_KEY, the page
// first asks for a key and the test types it in.
// Usage: node dashboard.mjs BASE_URL [SCREENSHOT.png] [API_KEY]
import { chromium } from "playwright-core";

const [base, screenshot, key] = process.argv.slice(2);
const auth = key ? { "X-API-Key": key } : {};
const FIELDS = [
  ["active_users", 0], ["events_per_second", 2], ["orders_placed", 0], ["orders_filled", 0],
  ["fill_rate", 3], ["active_strategies", 0], ["total_volume", 2], ["average_latency", 2], ["error_rate", 3],
];
const fmt = (v, digits) => (digits ? v.toFixed(digits) : String(v));
const deadline = (ms) => Date.now() + ms;

async function tiles(page) {
  return page.evaluate((keys) => ({
    asOf: document.body.dataset.asOf || null,
    values: Object.fromEntries(keys.map((k) => [k, document.getElementById("tile-" + k).textContent])),
    rows: document.querySelectorAll("#events tr").length,
    table: document.getElementById("events").textContent,
  }), FIELDS.map(([k]) => k));
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  let errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push("console: " + m.text()); });
  const response = await page.goto(base + "/");
  if (!response.ok()) throw new Error(`GET / answered ${response.status()}`);
  if (key) {
    // Refused without a key, the page asks for one.
    await page.waitForSelector("#keyform:not([hidden])", { timeout: 30000 });
    await page.fill("#key", key);
    await page.click("#keyform button");
    // The refusals before the key was given are expected.
    await new Promise((r) => setTimeout(r, 500));
    errors = [];
  }

  // The tiles equal the API for the same as_of (retry: the page and the API
  // may briefly look at different ticks).
  let matched = null;
  for (const until = deadline(30000); !matched && Date.now() < until;) {
    const shown = await tiles(page);
    const api = await (await fetch(base + "/api/v1/dashboard/metrics", { headers: auth })).json();
    if (shown.asOf && shown.asOf === api.as_of &&
        FIELDS.every(([k, d]) => shown.values[k] === fmt(api[k], d))) {
      matched = { shown, api };
    } else {
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  if (!matched) throw new Error("tiles never matched the API: " + JSON.stringify(await tiles(page)));
  if (Number(matched.shown.values.orders_placed) <= 0) throw new Error("expected orders on the page");

  // New events move the numbers and appear in the table.
  const before = Number(matched.shown.values.orders_placed);
  const marker = "web-test-" + Date.now();
  const batch = [1, 2, 3].map(() => ({ event_type: "order.placed", user_id: marker, properties: { symbol: "BTCUSDT", price: 1, quantity: 1 } }));
  const posted = await fetch(base + "/api/v1/events", { method: "POST", headers: { "content-type": "application/json", ...auth }, body: JSON.stringify(batch) });
  if (posted.status !== 201) throw new Error(`POST answered ${posted.status}`);
  let moved = false;
  for (const until = deadline(30000); !moved && Date.now() < until;) {
    const now = await tiles(page);
    moved = Number(now.values.orders_placed) >= before + 3 && now.table.includes(marker);
    if (!moved) await new Promise((r) => setTimeout(r, 200));
  }
  if (!moved) throw new Error("the page did not update: " + JSON.stringify(await tiles(page)));
  // The charts were drawn from /api/v1/metrics.
  const legend = await page.evaluate(() => document.getElementById("rates-legend").textContent);
  if (!legend.includes("order.placed")) throw new Error("events/s chart has no order.placed series: " + legend);
  // Percentiles of one symbol, with ticks on y and times on x.
  let chart = null;
  for (const until = deadline(30000); !chart && Date.now() < until;) {
    const c = await page.evaluate(() => {
      const canvas = document.getElementById("pct");
      return { symbol: document.getElementById("symbol").value, ...canvas.dataset };
    });
    if (c.symbol === "BTCUSDT" && (c.query || "").includes("symbol=BTCUSDT") && Number(c.points) > 0) {
      chart = c;
    } else {
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  if (!chart) throw new Error("no percentile chart for BTCUSDT");
  if (chart.yticks.split(" ").length !== 5 || chart.xlabels.split(" ").length < 5) {
    throw new Error("percentile chart axes: " + JSON.stringify(chart));
  }
  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log("web dashboard ok: tiles equal the API at", matched.api.as_of, "and moved from", before);
} finally {
  await browser.close();
}
