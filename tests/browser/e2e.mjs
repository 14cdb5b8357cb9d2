// Drives the polymodal web page in Debian's headless Chromium with playwright-core.
// usage: node e2e.mjs URL IMAGE_PATH SCREENSHOT_PATH FIELD=VALUE...
// Prints one JSON line: {"prediction": ..., "bars": [...], "error": ...}.
import { withPage } from "./launch.mjs";

const [url, imagePath, screenshot, ...pairs] = process.argv.slice(2);

await withPage(async (page) => {
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
});
