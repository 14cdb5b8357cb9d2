// Drives the search tab of the polymodal web page (a search-only server) in Debian's headless Chromium.
// usage: node search.mjs URL QUERY_TEXT IMAGE_PATH SCREENSHOT_PATH
// Prints one JSON line: {"info": ..., "text_results": [captions...], "image_results": [...], "error": ...}.
import { withPage } from "./launch.mjs";

const [url, queryText, imagePath, screenshot] = process.argv.slice(2);
const captions = (page) => page.$$eval("#search-results figcaption", (fs) => fs.map((f) => f.textContent));

await withPage(async (page) => {
  await page.goto(url);
  await page.waitForSelector("#search-panel:not([hidden])");
  const out = { info: await page.textContent("#model-info"),
    predictHidden: await page.$eval("#predict-panel", (e) => e.hidden),
    audioHidden: await page.$eval("#search-audio-label", (e) => e.hidden) };
  await page.fill("#search-text", queryText);
  await page.fill("#search-k", "3");
  await page.click("#search-btn");
  await page.waitForSelector("#search-results figure");
  out.text_results = await captions(page);
  out.thumbnails = await page.$$eval("#search-results img", (is) => is.length);
  await page.fill("#search-text", "");
  await page.setInputFiles("input[name=image]", imagePath);
  await page.click("#search-btn");
  await page.waitForFunction((first) => {
    const f = document.querySelector("#search-results figcaption");
    return f && f.textContent !== first;
  }, out.text_results[0]);
  out.image_results = await captions(page);
  out.error = await page.$eval("#search-error", (e) => (e.hidden ? null : e.textContent));
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify(out));
});
