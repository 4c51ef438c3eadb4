// The console's side of benchmarks/bench_console.py: signs in, opens the call, and records when
// each transcript line's text appears in the page (a MutationObserver on the transcript: the
// DOM, and the next animation frame after it: painted). Prints "READY" once the call's stream is
// live, waits for "DONE" on stdin, then prints one JSON line: [{text, dom_ms, frame_ms}, ...]
// with wall-clock milliseconds (the same clock as the agent's event timestamps on this machine).
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS } from "../../test/browser/harness.mjs";

const { GATEWAY_URL, SECRET, ROOM, CHROMIUM } = process.env;
const browser = await chromium.launch({ executablePath: CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_ARGS, headless: true });
try {
  const page = await (await browser.newContext({ viewport: { width: 1440, height: 900 } })).newPage();
  page.setDefaultTimeout(60_000);
  await page.goto(`${GATEWAY_URL}/console`);
  await page.getByLabel("API secret").fill(SECRET);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator(`.call-item[data-room="${ROOM}"]`).click();
  await page.locator(".pill", { hasText: "Stream" }).locator("b", { hasText: "live" }).waitFor();
  await page.evaluate(() => {
    window.seen = [];
    const known = new Set();
    const transcript = document.querySelector(".transcript-lines");
    const note = (text, now) => {
      if (!text || !text.startsWith("bench ") || known.has(text)) return;
      known.add(text);
      const record = { text, dom_ms: now, frame_ms: null };
      window.seen.push(record);
      requestAnimationFrame(() => (record.frame_ms = Date.now()));
    };
    // only what changed: a new line, or the live line's new text
    new MutationObserver((records) => {
      const now = Date.now();
      for (const record of records) {
        const target = record.target.nodeType === Node.TEXT_NODE ? record.target.parentElement : record.target;
        if (target?.classList?.contains("said")) note(target.textContent, now);
        for (const added of record.addedNodes) {
          if (added.nodeType !== Node.ELEMENT_NODE) continue;
          for (const said of added.matches(".said") ? [added] : added.querySelectorAll(".said")) note(said.textContent, now);
        }
      }
    }).observe(transcript, { childList: true, subtree: true, characterData: true });
  });
  console.log("READY");
  let input = "";
  for await (const chunk of process.stdin) {
    input += chunk;
    if (input.includes("DONE")) break;
  }
  await page.waitForTimeout(300); // the last frames
  console.log(JSON.stringify(await page.evaluate(() => window.seen)));
} finally {
  await browser.close();
}
