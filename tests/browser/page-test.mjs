// Drives the demo page (GET /) in Debian's headless Chromium, the way a
// person would: open it, see that it watches the default stream and
// counts us as a viewer, paste a token, post through the form, see the
// comment arrive, see a moderator's delete, and see it all on a phone.
//
//   node tests/browser/page-test.mjs <base-url> <token> [screenshot.png]
//
// The token must be a moderator's with the name claim "Alice" (the
// script deletes one of its own comments). The screenshot path gets a
// desktop shot, and the same name with "-phone" a 390x844 one.
// Run by tests/browser.rs; exits non-zero with a reason on any failure.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, token, screenshot] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node page-test.mjs <base-url> <token> [screenshot.png]");
  process.exit(2);
}
const STREAM = "demo";
const WAIT = 10_000;
const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

// Nothing may hang: the whole run has a deadline.
const guard = setTimeout(() => fail("the browser test took more than 90 s"), 90_000);
const profile = mkdtempSync(join(tmpdir(), "livecomment-chromium-"));
let context = null;
// Chromium logs a refused fetch as a console error; step 5 expects one.
let expectRefusedFetch = false;

function fail(reason) {
  console.error("browser test failed: " + reason);
  process.exitCode = 1;
  cleanup().finally(() => process.exit(1));
}

async function cleanup() {
  clearTimeout(guard);
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}

function check(condition, what) {
  if (!condition) throw new Error(what);
}

/** A page that fails the test on any script error or error log line. */
async function openPage(viewport) {
  const page = await context.newPage();
  await page.setViewportSize(viewport);
  page.on("pageerror", (err) => fail("script error on the page: " + err.message));
  page.on("console", (msg) => {
    const refusal = expectRefusedFetch && msg.text().includes("status of 401");
    if (msg.type() === "error" && !refusal) fail("console error on the page: " + msg.text());
  });
  await page.goto(base + "/", { waitUntil: "domcontentloaded" });
  return page;
}

async function api(method, path) {
  const r = await fetch(base + path, {
    method,
    headers: method === "GET" ? {} : { Authorization: "Bearer " + token },
  });
  return { status: r.status, body: r.status === 204 ? null : await r.json() };
}

/** Waits until the comment list holds an item whose text is `text`. */
function commentItem(page, text) {
  return page.locator("#comments li", { has: page.locator(".text", { hasText: text }) });
}

async function postThroughTheForm(page, text) {
  await page.getByLabel("Comment").fill(text);
  await page.getByRole("button", { name: "Post" }).click();
  const item = commentItem(page, text);
  await item.waitFor({ timeout: WAIT });
  return item;
}

async function main() {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
  });
  const page = await openPage({ width: 1280, height: 800 });

  // 1. It watches the default stream, and the server counts it.
  check((await page.getByLabel("Stream").inputValue()) === STREAM, "the default stream is demo");
  await page.locator("#status", { hasText: "Watching " + STREAM }).waitFor({ timeout: WAIT });
  const info = await api("GET", "/streams/" + STREAM);
  check(info.body.viewers === 1, "the server counts the page: " + JSON.stringify(info.body));
  await page.locator("#viewers", { hasText: /^1 watching$/ }).waitFor({ timeout: WAIT });

  // 2. Without a token, the page says so and posts nothing.
  await page.getByLabel("Comment").fill("no token");
  await page.getByRole("button", { name: "Post" }).click();
  await page.locator("#post-status", { hasText: "Paste a token" }).waitFor({ timeout: WAIT });

  // 3. A pasted token posts through the form; the comment comes back.
  await page.getByLabel("Token").fill(token);
  const hello = "Hello from Chromium 👋 <b>not bold</b>";
  const item = await postThroughTheForm(page, hello);
  check((await item.locator(".who").textContent()) === "Alice", "the name claim is shown");
  check((await item.locator("b").count()) === 0, "comment text is not parsed as HTML");
  check((await page.getByLabel("Comment").inputValue()) === "", "the form is cleared");
  const history = await api("GET", "/streams/" + STREAM + "/comments");
  check(history.body.comments.length === 1, "one comment stored: " + JSON.stringify(history.body));
  check(history.body.comments[0].text === hello, "the stored text is what was typed");

  // 4. A moderator's delete reaches the page.
  const doomed = await postThroughTheForm(page, "This one will be removed");
  const id = await doomed.getAttribute("data-id");
  const deleted = await api("DELETE", "/streams/" + STREAM + "/comments/" + id);
  check(deleted.status === 204, "the delete was accepted: " + deleted.status);
  await page.locator('#comments li.deleted[data-id="' + id + '"]').waitFor({ timeout: WAIT });
  check((await commentItem(page, hello).count()) === 1, "the other comment stays");

  // 5. A refused post is explained on the page.
  expectRefusedFetch = true;
  await page.getByLabel("Token").fill("not-a-token");
  await page.getByLabel("Comment").fill("refused");
  await page.getByRole("button", { name: "Post" }).click();
  await page.locator("#post-status.bad", { hasText: "Not posted" }).waitFor({ timeout: WAIT });
  expectRefusedFetch = false;

  // 6. On a phone, a newcomer sees the recent comment, not the deleted one.
  const phone = await openPage({ width: 390, height: 844 });
  await commentItem(phone, hello).waitFor({ timeout: WAIT });
  check((await phone.locator("#comments li").count()) === 1, "the deleted comment is not replayed");
  await phone.locator("#viewers", { hasText: /^2 watching$/ }).waitFor({ timeout: WAIT });
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth > innerWidth);
  check(!overflow, "the page fits a 390 px wide screen without scrolling sideways");

  if (screenshot) {
    await page.screenshot({ path: screenshot, fullPage: true });
    await phone.screenshot({ path: screenshot.replace(/\.png$/, "") + "-phone.png" });
  }
  console.log("browser test passed");
}

main()
  .then(cleanup)
  .catch((err) => fail(err.message));
