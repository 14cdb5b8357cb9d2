// Drives the polymodal web page in Debian's headless Chromium with playwright-core.
// usage: node e2e.mjs URL IMAGE_PATH SCREENSHOT_PATH FIELD=VALUE...
// Prints one JSON line: {"prediction": ..., "bars": [...], "error": ...}.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, imagePath, screenshot, ...pairs] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
// Flags this sandboxed, offline machine needs (background networking would be refused and retried).
const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
// A fresh, empty profile each run (Playwright takes the --user-data-dir through this call).
const userDataDir = mkdtempSync(join(tmpdir(), "polymodal-chromium-"));

const browser = await chromium.launchPersistentContext(userDataDir, { executablePath, args, headless: true,
  timeout: 60000 });
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  await page.goto(url);
  await page.waitForSelector("#predict:not([disabled])");
  await page.setInputFiles("input[name=image]", imagePath);
  await page.waitForSelector("img.preview:not([hidden])");
  for (const pair of pairs) {
    const [name, value] = pair.split("=");
    await page.fill(`input[name=${name}]`, value);
  }
  await page.click("#predict");
  await page.waitForSelector("#result:not([hidden]), #error:not([hidden])");
  const out = {
    prediction: await page.textContent("#prediction"),
    bars: await page.$$eval("#probabilities li", (lis) => lis.map((li) => li.dataset.cls)),
    error: await page.$eval("#error", (e) => (e.hidden ? null : e.textContent)),
    info: await page.textContent("#model-info"),
  };
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
