#!/usr/bin/env node
// Drive the demo page in headless Chromium as a person would: choose a file, read the result.
//
//   node web/page_check.mjs PAGE_URL IMAGE OUT.json [--target N] [--screenshot PNG]
//
// Chromium: $CHROMIUM or /usr/bin/chromium (Debian's package). Writes window.onnxcamResult, the
// page's console errors and every URL it requested to OUT.json; exit 1 if the page reports an error.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const [url, image, outPath] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "onnxcam-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run"],
});
const errors = [];
let code = 0;
try {
  const page = context.pages()[0] || (await context.newPage());
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(url);
  await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: 60000 });
  await page.fill("#target", arg("--target", "-1"));
  await page.setInputFiles("#file", image);
  await page.waitForFunction(() => ["done", "error"].includes(document.body.dataset.state), null, { timeout: 120000 });
  const result = await page.evaluate(() => ({ ...(window.onnxcamResult || {}), text: document.getElementById("result").textContent }));
  const shot = arg("--screenshot", null);
  if (shot) await page.screenshot({ path: shot, fullPage: true });
  writeFileSync(outPath, JSON.stringify({ ...result, consoleErrors: errors, requests }));
  code = result.error ? 1 : 0;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
