// Drives Debian's Chromium with playwright-core for tests/test_browser_e2e.py.
//
//   node drive.mjs spec.json        (or the spec on stdin)
//
// The spec: {"chromium": "/usr/bin/chromium", "timeoutMs": 30000, "tabs": [tab, ...]}, where each tab
// runs concurrently in one browser (one fresh profile):
//   {"name": "call", "url": "...", "delayMs": 0,
//    "waitFor": "js expression",          optional: poll until truthy
//    "call": {"fn": "run", "args": {...}}, optional: await window.e2e[fn](args)
//    "extract": "js expression",           optional: its value is returned
//    "screenshot": "/path.png"}            optional
// Prints one JSON object on stdout: {"tabs": {name: {value, extract, console, pageErrors, error}}}.
// Exits 0 even when a tab failed (its "error" says why); exits 2 when the browser did not start.
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { chromium } from "playwright-core";

// Polls an expression from here rather than with page.waitForFunction: that one evaluates strings
// inside the page, which a strict Content-Security-Policy (the live view's) rightly refuses.
async function waitFor(page, expression, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await page.evaluate(expression)) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${expression}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const spec = JSON.parse(process.argv[2] ? readFileSync(process.argv[2], "utf8") : readFileSync(0, "utf8"));
const args = [
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--no-sandbox",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--headless",
];
const timeoutMs = spec.timeoutMs ?? 30000;

let browser;
try {
  // launch() gives every run a new, empty temporary user-data-dir.
  browser = await chromium.launch({ executablePath: spec.chromium ?? "/usr/bin/chromium", headless: true, args, timeout: 15000 });
} catch (err) {
  process.stdout.write(JSON.stringify({ error: `chromium did not start: ${err.message}` }) + "\n");
  process.exit(2);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runTab(context, tab) {
  const result = { console: [], pageErrors: [] };
  if (tab.delayMs) await sleep(tab.delayMs);
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.on("console", (msg) => result.console.push(`${msg.type()}: ${msg.text()}`.slice(0, 2000)));
  page.on("pageerror", (err) => result.pageErrors.push(String(err).slice(0, 2000)));
  try {
    await page.goto(tab.url, { waitUntil: "load" });
    if (tab.waitFor) await waitFor(page, tab.waitFor, tab.waitTimeoutMs ?? timeoutMs);
    if (tab.call) {
      await page.waitForFunction(() => window.e2e !== undefined);
      result.value = await page.evaluate(([fn, a]) => window.e2e[fn](a), [tab.call.fn, tab.call.args ?? {}]);
    }
    if (tab.extract) result.extract = await page.evaluate(tab.extract);
  } catch (err) {
    result.error = String(err.message ?? err).slice(0, 4000);
    if (tab.extract) result.extract = await page.evaluate(tab.extract).catch(() => null);
  }
  if (tab.screenshot) {
    try {
      const png = await page.screenshot({ fullPage: true });
      writeFileSync(tab.screenshot, png);
      result.screenshot = { path: tab.screenshot, bytes: statSync(tab.screenshot).size };
    } catch (err) {
      result.screenshot = { path: tab.screenshot, error: String(err) };
    }
  }
  await page.close();
  return result;
}

const out = { tabs: {}, chromiumVersion: browser.version() };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const results = await Promise.all(spec.tabs.map((tab) => runTab(context, tab)));
  spec.tabs.forEach((tab, i) => (out.tabs[tab.name] = results[i]));
  await context.close();
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + "\n");
