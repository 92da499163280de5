// Render report.html in headless Chromium and check it: no console errors, no page errors,
// no network requests other than data: URIs, every <img> decoded (naturalWidth > 0); write a
// full-page screenshot. Needs node with puppeteer-core and @sparticuz/chromium (a Chromium
// build shipped inside the npm package: no download at run time) on NODE_PATH or beside it.
// Usage: node tests/report_browser_check.mjs REPORT_HTML SCREENSHOT_PNG
// Prints one JSON line; exit 0 when every check passes, 1 otherwise.
import { createRequire } from "node:module";
import path from "node:path";
import { pathToFileURL } from "node:url";

const require = createRequire(path.join(process.env.BROWSER_MODULES || process.cwd(), "x.js"));
const chromium = require("@sparticuz/chromium");
const puppeteer = require("puppeteer-core");

const [html, shot] = process.argv.slice(2);
const browser = await puppeteer.launch({
  args: (chromium.default || chromium).args,
  executablePath: await (chromium.default || chromium).executablePath(),
  headless: true,
});
const page = await browser.newPage();
await page.setViewport({ width: 1280, height: 900 });
const consoleErrors = [], pageErrors = [], requests = [];
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", (e) => pageErrors.push(String(e)));
page.on("request", (r) => { const u = r.url(); if (!u.startsWith("data:") && u !== pageUrl) requests.push(u); });
const pageUrl = pathToFileURL(path.resolve(html)).href;
await page.goto(pageUrl, { waitUntil: "load" });
const images = await page.$$eval("img", (imgs) => imgs.map((i) => ({
  ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth, alt: i.alt })));
const tables = await page.$$eval("table", (t) => t.length);
await page.screenshot({ path: shot, fullPage: false });
await browser.close();
const broken = images.filter((i) => !i.ok);
const result = { images: images.length, broken, tables, consoleErrors, pageErrors, requests };
console.log(JSON.stringify(result));
process.exit(broken.length || consoleErrors.length || pageErrors.length || requests.length
  || !images.length ? 1 : 0);
