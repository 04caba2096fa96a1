// Opens the chat page in headless Chromium, types a question, sends it, and waits for the streamed
// answer to finish on the page. Usage: node browser_chat.mjs URL (run with NODE_PATH set to a
// node_modules holding playwright-core).
import { createRequire } from "node:module";
const require = createRequire(process.env.NODE_PATH + "/");
const { chromium } = require("playwright-core");

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("model").textContent.length > 0);
  await page.fill("#input", "Where was Ana born?");
  await page.click("#send");
  // While streaming the reply grows; it is done when the page marks it so.
  const done = await page.waitForSelector('.msg.assistant[data-done="true"]', { timeout: 60000 });
  const answer = await done.textContent();
  const user = await page.textContent(".msg.user");
  if (user !== "Where was Ana born?" || !answer.trim()) throw new Error(`page shows ${user} / ${answer}`);
  // A second turn carries the first in the conversation.
  await page.fill("#input", "And then?");
  await page.click("#send");
  await page.waitForFunction(() => document.querySelectorAll('.msg.assistant[data-done="true"]').length === 2, null, { timeout: 60000 });
  console.log(`browser: the page streamed ${JSON.stringify(answer.slice(0, 60))} and a second turn`);
} finally {
  await browser.close();
}
