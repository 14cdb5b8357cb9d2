// Opens the server's /docs in Debian's headless Chromium with every request off the server's host refused,
// as on a machine without internet access, and reads what Swagger UI rendered.
// usage: node docs.mjs URL SCREENSHOT_PATH
// Prints one JSON line: {"operations": ["POST /predict", ...], "external": [URLs refused], "title": ...}.
import { withPage } from "./launch.mjs";

const [url, screenshot] = process.argv.slice(2);
const host = new URL(url).host;

await withPage(async (page) => {
  const external = [];
  await page.route("**/*", (route) => {
    const target = new URL(route.request().url());
    if (target.host === host || target.protocol === "data:") return route.continue();
    external.push(target.href);
    return route.abort();
  });
  await page.goto(new URL("docs", url).href);
  await page.waitForSelector(".opblock-summary", { timeout: 30000 });
  const operations = await page.$$eval(".opblock-summary", (els) => els.map((e) => {
    const method = e.querySelector(".opblock-summary-method")?.textContent ?? "";
    const path = e.querySelector(".opblock-summary-path")?.getAttribute("data-path") ?? "";
    return `${method} ${path}`;
  }));
  const title = await page.$eval(".info .title", (e) => e.textContent).catch(() => null);
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ operations, external, title }));
});
