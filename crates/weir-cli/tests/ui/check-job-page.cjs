// Drives the job's web UI in headless Chromium (Debian's, through playwright-core): waits until
// the page shows the job graph and the checkpoint history, clicks "Trigger savepoint", waits for
// the completed savepoint, and takes a screenshot. Prints what it saw as JSON.
//
//   node check-job-page.cjs URL SCREENSHOT.png     (NODE_PATH: the node_modules with playwright-core)
const { chromium } = require("playwright-core");

const [url, screenshot] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    // Headless, sandboxless (root in CI), and no calls home: this machine's network is closed.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(url);
    await page.waitForFunction(() => document.querySelectorAll(".vertex").length >= 2, null, { timeout: 30000 });
    await page.waitForFunction(() => document.querySelectorAll("#history tbody tr").length >= 2, null, { timeout: 30000 });
    await page.waitForFunction(() => /in [1-9]/.test(document.querySelector("#graph").innerText), null, { timeout: 30000 });
    const graph = await page.innerText("#graph");
    const state = await page.innerText("#job-state");
    const bars = await page.locator("#durations rect").count();
    await page.click("#trigger-savepoint");
    await page.waitForFunction(
      () => /^Savepoint (completed|failed)/.test(document.querySelector("#operation").innerText),
      null,
      { timeout: 60000 },
    );
    const operation = await page.innerText("#operation");
    const command = await page.innerText("#restore-command");
    // The savepoint shows up in the history on the next refresh.
    await page.waitForFunction(
      () => [...document.querySelectorAll("#history tbody tr")].some((r) => r.innerText.includes("savepoint (canonical)")),
      null,
      { timeout: 30000 },
    );
    await page.screenshot({ path: screenshot, fullPage: true });
    console.log(JSON.stringify({ state, graph, bars, operation, command, errors }));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
