// Shared by the page drivers: Debian's Chromium, headless, in a fresh empty profile, via playwright-core.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

// Flags this sandboxed, offline machine needs (background networking would be refused and retried).
const ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

// Runs `fn(page)` in a new browser and closes it (and deletes the profile) afterwards.
export async function withPage(fn) {
  const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
  const userDataDir = mkdtempSync(join(tmpdir(), "polymodal-chromium-"));
  const browser = await chromium.launchPersistentContext(userDataDir, { executablePath, args: ARGS,
    headless: true, timeout: 60000 });
  try {
    const page = await browser.newPage();
    page.setDefaultTimeout(20000);
    return await fn(page);
  } finally {
    await browser.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}
