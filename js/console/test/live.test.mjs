// The operator console in Debian's Chromium (playwright-core, never a downloaded browser), served
// by the real gateway process in front of the real livekit-server and a real agent worker. Run by
// tests/integration/test_console_live.py, which starts them, dispatches the worker into ROOM_1 and
// ROOM_2 (tenant A), runs tenant B's agent in ROOM_B, and serves HELPER_URL (/hear: the room's
// caller says something to the agent; /room: who is in a room and what they publish).
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { connect, createServer as createTcpServer } from "node:net";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { CHROMIUM_ARGS, recordPeerConnections } from "../../test/browser/harness.mjs";

const { GATEWAY_URL, HELPER_URL, SECRET_A, SECRET_B, CODE_A, CODE_B, ROOM_1, ROOM_2, ROOM_B, SCREENSHOTS, CHROMIUM } = process.env;
const WAIT_MS = 30_000;
let browser;
let context;
let page;
const pageLines = [];

before(async () => {
  assert.ok(GATEWAY_URL && HELPER_URL && SECRET_A && SECRET_B && ROOM_1 && ROOM_2 && ROOM_B && SCREENSHOTS, "run by tests/integration/test_console_live.py");
  browser = await chromium.launch({ executablePath: CHROMIUM ?? "/usr/bin/chromium", args: CHROMIUM_ARGS, headless: true });
  context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1, locale: "en-GB", timezoneId: "UTC" });
  await context.addInitScript(() => {
    window.cspViolations = [];
    document.addEventListener("securitypolicyviolation", (event) => window.cspViolations.push(`${event.effectiveDirective} ${event.blockedURI}`));
  });
  await recordPeerConnections(context);
  page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  page.on("console", (message) => pageLines.push(`${message.type()}: ${message.text()}`));
  page.on("pageerror", (error) => pageLines.push(`pageerror: ${error.message}`));
});

after(async () => {
  if (process.exitCode) console.log(pageLines.join("\n"));
  await browser?.close();
});

// ------------------------------------------------------------------------------------- helpers

async function hear(room, text) {
  const response = await fetch(`${HELPER_URL}/hear`, { method: "POST", body: JSON.stringify({ room, text }) });
  assert.equal(response.status, 200, `the helper answered ${response.status}`);
}

async function participants(room) {
  return (await fetch(`${HELPER_URL}/room?room=${encodeURIComponent(room)}`)).json();
}

/** The agent's state as the REST API reports it (with the api-secret, not the console's session). */
async function agentState(code, room, secret) {
  const response = await fetch(`${GATEWAY_URL}/v1/agent/${code}/get-state`, {
    method: "POST",
    headers: { "api-secret": secret, "content-type": "application/json" },
    body: JSON.stringify({ room_id: room }),
  });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  return JSON.parse(text).data.rooms[0].result.state;
}

async function until(what, check, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

const activity = () => page.locator(".activity-log");
/** The newest activity entry whose label is `label`. */
const entry = (label) => activity().locator(".entry", { has: page.locator(".what", { hasText: label }) }).first();
const transcript = () => page.locator(".transcript-lines");
const callItem = (room) => page.locator(`.call-item[data-room="${room}"]`);

async function shot(name) {
  await page.evaluate(() => window.scrollTo(0, 0)); // the header in view, however tall the page grew
  await page.screenshot({ path: `${SCREENSHOTS}/${name}`, fullPage: false });
}

async function tab(name) {
  await page.getByRole("tab", { name }).click();
}

// ------------------------------------------------------------------------------------- the tests

test("the page loads under a strict CSP, and a wrong secret shows the gateway's error", async () => {
  const response = await page.goto(`${GATEWAY_URL}/console`);
  const headers = response.headers();
  assert.match(headers["content-security-policy"], /script-src 'self';/);
  assert.doesNotMatch(headers["content-security-policy"], /unsafe/);
  assert.equal(headers["x-frame-options"], "DENY");
  await page.getByLabel("API secret").fill("not-the-secret");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "UNAUTHORIZED" }).waitFor();
  assert.deepEqual(await page.evaluate(() => window.cspViolations), []);
});

test("signing in: an HttpOnly SameSite=Strict cookie, the secret nowhere in the page; the list shows this tenant's calls", async () => {
  await page.getByLabel("API secret").fill(SECRET_A);
  await page.getByRole("button", { name: "Sign in" }).click();
  await callItem(ROOM_1).waitFor();
  await callItem(ROOM_2).waitFor();
  assert.equal(await callItem(ROOM_B).count(), 0, "tenant B's call is not listed");
  // RoomIO publishes the agent's state; the list shows it
  await callItem(ROOM_1).locator(".state", { hasText: "listening" }).waitFor();
  await callItem(ROOM_1).getByText("caller-ann-lee").waitFor();
  const cookies = await context.cookies();
  assert.equal(cookies.length, 1);
  const [cookie] = cookies;
  assert.equal(cookie.name, "imaginex_console");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(cookie.path, "/console");
  assert.notEqual(cookie.value, SECRET_A);
  const seen = await page.evaluate(() => ({
    cookie: document.cookie,
    local: localStorage.length,
    session: sessionStorage.length,
    url: location.href,
    input: document.querySelector('input[type="password"]'),
  }));
  assert.deepEqual(seen, { cookie: "", local: 0, session: 0, url: `${GATEWAY_URL}/console`, input: null });
  assert.ok(!(await page.content()).includes(SECRET_A));
  // the overview, while no call is open: every call of the tenant, with its state
  const board = page.getByRole("table", { name: "Live calls" });
  await board.getByRole("button", { name: `Open the call ${ROOM_1}` }).waitFor();
  await board.getByRole("button", { name: `Open the call ${ROOM_2}` }).waitFor();
  await board.getByRole("row", { name: new RegExp(ROOM_1) }).getByText("listening").waitFor();
  await shot("calls.png");
});

test("keyboard: Tab reaches a call and Enter opens it; every control has a name a screen reader reads", async () => {
  let focused = "";
  for (let i = 0; i < 40 && focused !== ROOM_1; i++) {
    await page.keyboard.press("Tab");
    focused = await page.evaluate(() => document.activeElement?.getAttribute("data-room") ?? "");
  }
  assert.equal(focused, ROOM_1, "Tab reaches the call");
  await page.keyboard.press("Enter");
  await page.getByRole("heading", { name: ROOM_1, level: 2 }).waitFor();
  assert.equal(await page.evaluate(() => document.activeElement?.id), "call-title", "focus moves to the call");
  assert.equal(await callItem(ROOM_1).getAttribute("aria-current"), "true");

  // the tabs: arrow keys move between them
  await page.getByRole("tab", { name: "Speak" }).focus();
  await page.keyboard.press("ArrowRight");
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), "Context");
  assert.equal(await page.getByRole("tab", { name: "Context" }).getAttribute("aria-selected"), "true");
  await page.keyboard.press("ArrowLeft");

  const unnamed = await page.evaluate(() => {
    const problems = [];
    for (const element of document.querySelectorAll("button, input, textarea, select, meter, [role=tab], [role=tabpanel], [role=log], dialog, nav, section, aside section")) {
      const labelled = element.getAttribute("aria-label") || element.getAttribute("aria-labelledby");
      const byLabel = element.labels && [...element.labels].some((label) => label.textContent.trim());
      const byText = (element.tagName === "BUTTON" || element.getAttribute("role") === "tab") && element.textContent.trim();
      if (!labelled && !byLabel && !byText) problems.push(element.outerHTML.slice(0, 120));
    }
    return problems;
  });
  assert.deepEqual(unnamed, []);
  // the transcript and the activity are live regions a screen reader announces
  assert.equal(await transcript().getAttribute("role"), "log");
  assert.equal(await activity().getAttribute("aria-live"), "polite");
});

test("the caller's words, the agent's tool call and its answer reach the transcript", async () => {
  await page.locator(".pill", { hasText: "Stream" }).locator("b", { hasText: "live" }).waitFor();
  await hear(ROOM_1, "Hi, I'm calling about my order 4417, where is it?");
  await transcript().locator(".line.user", { hasText: "order 4417" }).first().waitFor();
  await transcript().locator(".line.tool", { hasText: "lookup_order completed" }).waitFor();
  await transcript().locator(".line.assistant", { hasText: "shipped yesterday" }).waitFor();
  // the agent's state follows the events: back to listening once it answered
  await page.locator(".pill", { hasText: "Agent" }).locator("b", { hasText: "listening" }).waitFor();
});

test("speak: its ack, then the playout events, then the line in the transcript", async () => {
  await tab("Speak");
  await page.getByRole("textbox", { name: "Message", exact: true }).fill("While I have you: your refund for order 3920 was approved this morning.");
  await page.getByRole("button", { name: "Speak", exact: true }).click();
  const speak = entry("Speak");
  await speak.locator(".status", { hasText: "✓ Speech triggered successfully" }).waitFor();
  await speak.locator(".notes", { hasText: "▶ started playing" }).waitFor();
  await speak.locator(".notes", { hasText: "■ finished" }).waitFor();
  await transcript().locator(".line.assistant", { hasText: "refund for order 3920" }).waitFor();
});

test("add_context shows up in the context panel; replaced and removed entries go with their reason; a reply marks the entry it used", async () => {
  await tab("Context");
  const addContext = async (key, text) => {
    await page.getByRole("textbox", { name: "Context", exact: true }).fill(text);
    await page.getByRole("textbox", { name: "Key (optional)", exact: true }).fill(key);
    await page.getByRole("button", { name: "Add context" }).click();
    await entry("Add context").locator(".status", { hasText: "✓ Context added successfully" }).waitFor();
  };
  await addContext("vip", "VIP customer since 2019: offer a 10% discount on any reorder.");
  const [first] = (await agentState(CODE_A, ROOM_1, SECRET_A)).context_entries;
  assert.equal(first.key, "vip");
  // a keyed entry keeps its entry id when replaced: the request that added it names the version
  const firstEntry = page.locator(`.context-entry[data-request-id="${first.request_id}"]`);
  await firstEntry.waitFor();
  // replaced before any reply used it: context_dropped{replaced} takes it away, with its reason
  await addContext("vip", "VIP customer since 2019: offer free express shipping on any reorder.");
  const replaced = entry("Add context").locator("xpath=following-sibling::li[1]");
  await replaced.locator(".notes .failed", { hasText: "dropped before any reply used it: replaced by a newer entry with the same key" }).waitFor();
  await firstEntry.waitFor({ state: "detached" });
  await page.locator(`.context-dropped[data-request-id="${first.request_id}"][data-reason=replaced]`, { hasText: "vip dropped: replaced by a newer entry with the same key" }).waitFor();
  const vip = page.locator(".context-entry", { has: page.locator("code", { hasText: "vip" }) });
  await vip.locator(".context-text", { hasText: "free express shipping" }).waitFor();
  const [second] = (await agentState(CODE_A, ROOM_1, SECRET_A)).context_entries;
  assert.deepEqual([second.key, second.request_id !== first.request_id], ["vip", true]);
  await page.locator(`.context-entry[data-request-id="${second.request_id}"]`).waitFor();

  await addContext("scratch", "Temporary note for this test.");
  const scratch = page.locator(".context-entry", { has: page.locator("code", { hasText: "scratch" }) });
  await scratch.waitFor();
  const scratchId = await scratch.getAttribute("data-request-id");
  await page.getByRole("button", { name: "Remove context scratch" }).click();
  await entry("Remove context").locator(".status", { hasText: "removed: true" }).waitFor();
  await scratch.waitFor({ state: "detached" });
  await page.locator(`.context-dropped[data-request-id="${scratchId}"][data-reason=removed]`, { hasText: "scratch dropped: removed" }).waitFor();
  assert.deepEqual((await agentState(CODE_A, ROOM_1, SECRET_A)).context_entries.map((e) => e.key), ["vip"]);

  // the agent's next reply carries the entry: context_used marks it, with the model request
  assert.equal(await vip.locator(".context-used").count(), 0, "not used before any reply");
  await hear(ROOM_1, "Is there anything you can do for me on a reorder?");
  await transcript().locator(".line.assistant", { hasText: "free express shipping" }).waitFor();
  await vip.locator(".context-used", { hasText: /✓ used in a reply \(model request \d+\)/ }).waitFor();
  assert.match(await vip.getAttribute("class"), /\bused\b/);
  const added = activity().locator(`.entry[data-request-id="${second.request_id}"]`);
  await added.locator(".notes", { hasText: "✓ used in a reply" }).waitFor();
  const seenMark = await vip.locator(".context-used").textContent();
  assert.equal(await vip.locator(".context-used time").count(), 1, "the event says when");
  await shot("context.png");

  // get-state names the model request too, so a page that did not see the event (opened after
  // it) marks the entry all the same, from the state: the same request, without a time
  const [usedEntry] = (await agentState(CODE_A, ROOM_1, SECRET_A)).context_entries;
  assert.equal(usedEntry.request_id, second.request_id);
  assert.equal(seenMark.match(/model request (\d+)/)[1], String(usedEntry.used.index), seenMark);
  const late = await context.newPage();
  late.setDefaultTimeout(WAIT_MS);
  late.on("pageerror", (error) => pageLines.push(`late page pageerror: ${error.message}`));
  try {
    await late.goto(`${GATEWAY_URL}/console`);
    await late.locator(`.call-item[data-room="${ROOM_1}"]`).click();
    await late.getByRole("tab", { name: "Context" }).click();
    const lateVip = late.locator(`.context-entry[data-request-id="${second.request_id}"]`);
    await lateVip.locator(".context-used", { hasText: `✓ used in a reply (model request ${usedEntry.used.index})` }).waitFor();
    assert.match(await lateVip.getAttribute("class"), /\bused\b/);
    assert.equal(await lateVip.locator(".context-used time").count(), 0, "the state does not say when");
  } finally {
    await late.close();
  }
});

test("context another backend added leaves unused: evicted by the budget, expired by its ttl, each with its reason", async () => {
  await tab("Context");
  /** add_context from another backend (the helper signs it and sends it with PerformRpc). */
  const addElsewhere = async (id, fields) => {
    const response = await fetch(`${HELPER_URL}/add-context`, { method: "POST", body: JSON.stringify({ room: ROOM_1, fields: { id, ...fields } }) });
    const ack = await response.json();
    assert.equal(ack.success, true, JSON.stringify(ack));
  };
  // about 12,000 characters each: the third passes the budget (32,000) and evicts the oldest
  // entry without a key; the other two run out their 3 s ttl
  const history = (n) => `Order history, page ${n}: ${"lorem ipsum ".repeat(1000)}`;
  const tag = Date.now().toString(36);
  const [oldest, shortA, shortB] = [`evicted-${tag}`, `ttl-a-${tag}`, `ttl-b-${tag}`];
  await addElsewhere(oldest, { context: history(1) });
  await page.locator(`.context-entry[data-request-id="${oldest}"]`).waitFor(); // the next get-state
  await addElsewhere(shortA, { context: history(2), ttl_s: 3 });
  await addElsewhere(shortB, { context: history(3), ttl_s: 3 });
  await page.locator(`.context-dropped[data-request-id="${oldest}"][data-reason=evicted]`, { hasText: "dropped: evicted to keep within the context budget" }).waitFor();
  await page.locator(`.context-entry[data-request-id="${oldest}"]`).waitFor({ state: "detached" });
  for (const id of [shortA, shortB]) {
    await page.locator(`.context-dropped[data-request-id="${id}"][data-reason=expired]`, { hasText: "dropped: its time ran out" }).waitFor();
    await page.locator(`.context-entry[data-request-id="${id}"]`).waitFor({ state: "detached" });
  }
  const held = (await agentState(CODE_A, ROOM_1, SECRET_A)).context_entries.map((e) => e.request_id);
  assert.deepEqual(held.filter((id) => [oldest, shortA, shortB].includes(id)), [], held.join(", "));
});

/**
 * A TCP proxy in front of the gateway that can cut the page's events streams (and refuse new
 * ones) while everything else goes through: a network blip on the stream alone. It records
 * the request line and the Last-Event-ID of each events request.
 */
async function blipProxy(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  const requests = [];
  let blocked = false;
  const server = createTcpServer((client) => {
    const upstream = connect(Number(port), hostname);
    const pair = { client, upstream, events: false };
    sockets.add(pair);
    client.on("data", (chunk) => {
      const head = chunk.toString("latin1", 0, Math.min(chunk.length, 4096));
      const line = /^(GET|POST|PUT|DELETE|HEAD|OPTIONS) (\S+)/.exec(head);
      if (line) {
        pair.events = line[1] === "GET" && /\/events\?/.test(line[2]);
        if (pair.events) {
          requests.push({ path: line[2], lastEventId: /\r\nlast-event-id: *(\S+)/i.exec(head)?.[1] ?? null, blocked });
          if (blocked) {
            client.destroy();
            upstream.destroy();
            return;
          }
        }
      }
      upstream.write(chunk);
    });
    upstream.on("data", (chunk) => client.write(chunk));
    const close = () => {
      sockets.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on("close", close);
      socket.on("error", close);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    /** Break every events stream now, and every one opened until `restore`. */
    cut() {
      blocked = true;
      for (const pair of sockets) {
        if (!pair.events) continue;
        pair.client.destroy();
        pair.upstream.destroy();
      }
    },
    restore() {
      blocked = false;
    },
    close() {
      for (const pair of sockets) pair.client.destroy();
      server.close();
    },
  };
}

async function history(code, room, secret) {
  const response = await fetch(`${GATEWAY_URL}/v1/agent/${code}/get-history`, {
    method: "POST",
    headers: { "api-secret": secret, "content-type": "application/json" },
    body: JSON.stringify({ room_id: room, limit: 200 }),
  });
  assert.equal(response.status, 200);
  return (await response.json()).data.rooms[0].result.history;
}

/** Waits for tenant A's agent in ROOM_1 to hold an item of `role` saying `text`. */
async function agentSaid(text, role = "assistant") {
  return until(`the agent's history to hold "${text}"`, async () =>
    (await history(CODE_A, ROOM_1, SECRET_A)).find((item) => item.role === role && item.text.includes(text)),
  );
}

/**
 * Runs `body` on a second console page that reaches the gateway through a `blipProxy` (so that
 * its events stream can be cut), showing ROOM_1 with its stream live; closes both after.
 */
async function onBlipPage(label, body) {
  const proxy = await blipProxy(GATEWAY_URL);
  const blip = await context.newPage();
  blip.setDefaultTimeout(WAIT_MS);
  blip.on("pageerror", (error) => pageLines.push(`${label} pageerror: ${error.message}`));
  try {
    await blip.goto(`${proxy.url}/console`);
    await blip.locator(`.call-item[data-room="${ROOM_1}"]`).click();
    const pill = blip.locator(".pill", { hasText: "Stream" }).locator("b");
    await pill.filter({ hasText: "live" }).waitFor();
    await body({ proxy, blip, pill, lines: blip.locator(".transcript-lines") });
  } finally {
    await blip.close();
    proxy.close();
  }
}

/** The transcript's lines, each drawn once and those matching `patterns` in that order. */
async function eachLineOnceInOrder(lines, patterns) {
  const drawn = await lines.locator(".line[data-item-id]").evaluateAll((items) => items.map((item) => ({ id: item.dataset.itemId, text: item.querySelector(".said").textContent, role: item.className })));
  const ids = drawn.map((line) => line.id);
  assert.equal(new Set(ids).size, ids.length, `a line drawn twice: ${JSON.stringify(drawn)}`);
  const texts = drawn.map((line) => line.text);
  const order = patterns.map((pattern) => {
    const found = texts.flatMap((text, index) => (pattern.test(text) ? [index] : []));
    assert.equal(found.length, 1, `${pattern} drawn ${found.length} times: ${JSON.stringify(texts)}`);
    return found[0];
  });
  assert.deepEqual([...order].sort((a, b) => a - b), order, `out of order: ${JSON.stringify(texts)}`);
  return drawn;
}

/** The Last-Event-ID of each events request that went through after the blip (at least one). */
function resumedAfter(proxy) {
  const resumed = proxy.requests.filter((request) => !request.blocked && request.lastEventId !== null);
  assert.ok(resumed.length >= 1, `resumed with Last-Event-ID: ${JSON.stringify(proxy.requests)}`);
  return resumed.map((request) => Number(request.lastEventId));
}

test("a network blip on the events stream: it resumes with Last-Event-ID; every line once, in order; each playout note once", async () => {
  await onBlipPage("blip", async ({ proxy, blip, pill, lines }) => {
    const blipEntry = (detail) => blip.locator(".activity-log .entry", { has: blip.locator(".detail", { hasText: detail }) });
    const speak = async (text) => {
      await blip.getByRole("textbox", { name: "Message", exact: true }).fill(text);
      await blip.getByRole("button", { name: "Speak", exact: true }).click();
      await blipEntry(text).locator(".status", { hasText: "✓ Speech triggered successfully" }).waitFor();
    };

    const one = "Blip line one: your parcel left the warehouse.";
    await speak(one);
    await blipEntry(one).locator(".notes", { hasText: "■ finished" }).waitFor();
    await lines.locator(".line.assistant", { hasText: "Blip line one" }).waitFor();
    const seqBefore = Number(await blip.locator("section.call").getAttribute("data-seq"));
    assert.ok(seqBefore > 0, "the page has seen numbered (v1.3) events");

    // the blip: the stream breaks, the agent keeps talking
    proxy.cut();
    await pill.filter({ hasText: "reconnecting" }).waitFor();
    const two = "Blip line two: it is with the courier now.";
    const three = "Blip line three: expect it before noon.";
    await speak(two); // the controls still work: only the stream is down
    await agentSaid("Blip line two");
    await hear(ROOM_1, "Where is order 7788 right now?");
    await agentSaid("order 7788 shipped yesterday");
    await speak(three);
    await agentSaid("Blip line three");
    await until("the speech to finish", async () => (await agentState(CODE_A, ROOM_1, SECRET_A)).pending_speeches.length === 0);
    assert.equal(await lines.locator(".line", { hasText: /Blip line two|order 7788|Blip line three/ }).count(), 0, "nothing came while the stream was down");

    proxy.restore();
    await pill.filter({ hasText: "live" }).waitFor();
    await lines.locator(".line.assistant", { hasText: "Blip line three" }).waitFor();
    assert.ok(resumedAfter(proxy)[0] >= seqBefore);
    await blip.locator(".activity-log .entry.notice", { hasText: "The events stream is back: resumed after event" }).first().waitFor();

    // every line once, in the order it was said
    const drawn = await eachLineOnceInOrder(lines, [/Blip line one/, /Blip line two/, /Where is order 7788/, /^lookup_order completed$/, /order 7788 shipped yesterday/, /Blip line three/]);
    // what the agent holds and what the page shows: the same items, none missing
    const held = (await history(CODE_A, ROOM_1, SECRET_A)).filter((item) => item.role === "user" || item.role === "assistant").map((item) => item.id);
    assert.deepEqual(new Set(drawn.filter((line) => !line.id.startsWith("tool-")).map((line) => line.id)), new Set(held));
    // the playout events of the speeches said during the blip came once each (replayed)
    for (const text of [two, three]) {
      const notes = await blipEntry(text).locator(".notes li").allTextContents();
      assert.deepEqual(notes.map((note) => note.replace(/^\d\d:\d\d:\d\d/, "").replace(/ after .*/, "")), ["▶ started playing", "■ finished"], text);
    }
  });
});

test("events lost for good: the page says so in red, then rebuilds from the snapshot, every line once", async () => {
  // the blip page's stream is then the only one on ROOM_1: once it is cut, the gateway's feed
  // closes (its next heartbeat finds the client gone) and a resume must ask the agent, whose
  // buffer (console_worker.EVENT_BUFFER, 12 events) no longer reaches back
  await callItem(ROOM_2).click();
  await page.getByRole("heading", { name: ROOM_2, level: 2 }).waitFor();
  try {
    await onBlipPage("lost", async ({ proxy, blip, pill, lines }) => {
      await lines.locator(".line.assistant", { hasText: "Blip line three" }).waitFor();
      const speakDirect = async (message) => {
        const response = await fetch(`${GATEWAY_URL}/v1/agent/${CODE_A}/speak`, {
          method: "POST",
          headers: { "api-secret": SECRET_A, "content-type": "application/json" },
          body: JSON.stringify({ room_id: ROOM_1, message }),
        });
        assert.equal(response.status, 200, await response.text());
      };

      // a numbered event drawn first: the seq the page resumes after (a page that saw none reads
      // the history again instead)
      await speakDirect("Lost line zero: one moment please.");
      await lines.locator(".line.assistant", { hasText: "Lost line zero" }).waitFor();
      const seqBefore = Number(await blip.locator("section.call").getAttribute("data-seq"));
      assert.ok(seqBefore > 0);
      proxy.cut();
      const cutAt = Date.now();
      await pill.filter({ hasText: "reconnecting" }).waitFor();
      for (const text of ["Lost line one: a new tracking number is on its way.", "Lost line two: it arrives by courier.", "Lost line three: no signature is needed."]) {
        await speakDirect(text);
        await agentSaid(text.slice(0, 14));
      }
      await hear(ROOM_1, "And order 9051, where is that one?");
      await agentSaid("order 9051 shipped yesterday");
      await until("the speeches to end", async () => (await agentState(CODE_A, ROOM_1, SECRET_A)).pending_speeches.length === 0);
      // the gateway notices the cut stream when its heartbeat (15 s) finds the client gone
      await until("the gateway's heartbeat to find the cut stream", async () => Date.now() - cutAt > 18_000, 25_000);
      assert.equal(await lines.locator(".line", { hasText: /Lost line (one|two|three)|order 9051/ }).count(), 0, "nothing came while the stream was down");

      proxy.restore();
      await pill.filter({ hasText: "live" }).waitFor();
      const note = lines.locator(".line.system.lost", { hasText: /lost while the console was away; the view was rebuilt from the agent's snapshot/ });
      await note.waitFor();
      await blip.locator(".activity-log .entry.notice.error", { hasText: "lost while the console was away" }).first().waitFor();
      await lines.locator(".line.assistant", { hasText: "order 9051 shipped yesterday" }).waitFor();
      await eachLineOnceInOrder(lines, [/Blip line three/, /Lost line zero/, /Lost line one/, /Lost line two/, /Lost line three/, /And order 9051/, /order 9051 shipped yesterday/]);
      // live again after the snapshot: a new line comes once
      await speakDirect("After the gap: anything else I can help with?");
      await lines.locator(".line.assistant", { hasText: "After the gap" }).waitFor();
      assert.equal(await lines.locator(".line.assistant", { hasText: "After the gap" }).count(), 1);
      assert.ok(resumedAfter(proxy).at(-1) >= seqBefore);
    });
  } finally {
    await callItem(ROOM_1).click();
    await page.getByRole("heading", { name: ROOM_1, level: 2 }).waitFor();
    await page.locator(".pill", { hasText: "Stream" }).locator("b", { hasText: "live" }).waitFor();
  }
});

test("a refused action shows its error code and sentence; a queued speech can be cancelled", async () => {
  await tab("Speak");
  const long = "Please hold while I look through the shipping records for every parcel on this account, it will only take a moment.";
  await page.getByRole("textbox", { name: "Message", exact: true }).fill(long);
  await page.getByRole("button", { name: "Speak", exact: true }).click();
  await entry("Speak").locator(".notes", { hasText: "▶ started playing" }).waitFor();
  await page.getByRole("textbox", { name: "Message", exact: true }).fill("Are you still there?");
  await page.getByLabel("Only if idle").check();
  await page.getByRole("button", { name: "Speak", exact: true }).click();
  await entry("Speak").locator(".status", { hasText: "✗ BUSY" }).waitFor();
  assert.match(await entry("Speak").locator(".status").textContent(), /^✗ BUSY: \S/);

  // queued behind the long one: cancelled from the pending list before it plays
  await page.getByLabel("After what is queued").check();
  await page.getByRole("textbox", { name: "Message", exact: true }).fill("This one should never be heard.");
  await page.getByRole("button", { name: "Speak", exact: true }).click();
  const pending = page.locator(".pending-speech", { hasText: "never be heard" });
  await pending.waitFor();
  await pending.getByRole("button", { name: /^Cancel the speech/ }).click();
  await entry("Cancel speech").locator(".status", { hasText: "cancelled: queued" }).waitFor();
  // speech_failed{cancelled}: the pending list and the speak's entry say why it never played
  const failed = page.locator(".pending-speech.failed[data-reason=cancelled]", { hasText: "never be heard" });
  await failed.locator(".tag", { hasText: "did not play: cancelled" }).waitFor();
  assert.equal(await failed.getByRole("button").count(), 0, "nothing left to cancel");
  assert.equal(await page.locator(".pending-speech:not(.failed)", { hasText: "never be heard" }).count(), 0);
  const cancelled = activity().locator(".entry", { has: page.locator(".detail", { hasText: "never be heard" }) });
  await cancelled.locator(".notes .failed", { hasText: "✗ did not play: cancelled before it played" }).waitFor();
});

test("interrupt, mute, stop listening, instructions and a user message: each with its ack", async () => {
  await page.getByRole("button", { name: "Interrupt", exact: true }).click();
  await entry("Interrupt").locator(".status", { hasText: "✓" }).waitFor();
  await page.getByRole("button", { name: "Mute the agent" }).click();
  await page.getByRole("button", { name: "Unmute the agent" }).waitFor();
  await page.getByRole("button", { name: "Stop it listening" }).click();
  await page.getByRole("button", { name: "Let it listen" }).waitFor();
  let io = (await agentState(CODE_A, ROOM_1, SECRET_A)).io;
  assert.deepEqual([io.agent_audio, io.user_audio], [false, false]);
  await page.getByRole("button", { name: "Unmute the agent" }).click();
  await page.getByRole("button", { name: "Let it listen" }).click();
  await page.getByRole("button", { name: "Mute the agent" }).waitFor();
  await page.getByRole("button", { name: "Stop it listening" }).waitFor();
  io = (await agentState(CODE_A, ROOM_1, SECRET_A)).io;
  assert.deepEqual([io.agent_audio, io.user_audio], [true, true]);

  await tab("Instructions");
  await page.getByRole("textbox", { name: "Instructions", exact: true }).fill("Keep every answer under two sentences.");
  await page.getByRole("button", { name: "Update instructions" }).click();
  await entry("Update instructions").locator(".status", { hasText: "✓" }).waitFor();
  await page.getByRole("button", { name: "Reset instructions" }).click();
  await entry("Reset instructions").locator(".status", { hasText: "✓" }).waitFor();

  await tab("As the user");
  await page.getByRole("textbox", { name: "User message", exact: true }).fill("Can you also check order 5120?");
  // sent from the keyboard: Ctrl+Enter in the text area
  await page.getByRole("textbox", { name: "User message", exact: true }).press("Control+Enter");
  await entry("User message").locator(".status", { hasText: "✓" }).waitFor();
  await transcript().locator(".line.user", { hasText: "order 5120" }).waitFor();
  await transcript().locator(".line.assistant", { hasText: "order 5120 shipped yesterday" }).waitFor();
  await page.locator(".pill", { hasText: "Agent" }).locator("b", { hasText: "listening" }).waitFor();
  // one the agent does not answer: no event says so, the console reads it from the history
  await page.getByLabel("Let the agent answer").uncheck();
  await page.getByRole("textbox", { name: "User message", exact: true }).fill("I prefer to be contacted by email.");
  await page.getByRole("button", { name: "Send as the user" }).click();
  await transcript().locator(".line.user", { hasText: "contacted by email" }).waitFor();
  await tab("Speak");
  await shot("call.png");
});

test("take over: the operator's microphone is published and the agent muted; hand back restores it", async () => {
  // long enough (about 8 s at the worker's 0.03 s a character) to still be playing when the
  // operator is live: joining the room took over 3 s on a loaded machine, past a shorter speech
  await page.getByRole("textbox", { name: "Message", exact: true }).fill(
    "Thanks for waiting, I am now checking the warehouse system for the exact delivery slot of your parcel, " +
      "then the courier's route for today and the address we have on file, and whether a neighbour or a " +
      "parcel locker could take it if nobody is at home this afternoon.",
  );
  await page.getByRole("button", { name: "Speak", exact: true }).click();
  await entry("Speak").locator(".notes", { hasText: "▶ started playing" }).waitFor();
  const spoken = entry("Speak");

  await page.getByRole("button", { name: "Take over" }).click();
  await page.getByRole("status").filter({ hasText: "You are live on this call." }).waitFor();
  await entry("Take over").locator(".status", { hasText: "✓ live as imaginex-operator-" }).waitFor();
  // the agent was cut off, muted and stopped listening
  await spoken.locator(".notes", { hasText: "■ cut off" }).waitFor();
  const io = (await agentState(CODE_A, ROOM_1, SECRET_A)).io;
  assert.deepEqual([io.agent_audio, io.user_audio], [false, false]);
  // LiveKit shows the operator publishing a microphone, and nothing else
  const operator = await until("the operator's microphone in the room", async () =>
    (await participants(ROOM_1)).find((p) => p.identity.startsWith("imaginex-operator-") && p.tracks.length),
  );
  assert.deepEqual(operator.tracks.map((t) => [t.type, t.source]), [["AUDIO", "MICROPHONE"]]);
  assert.equal(operator.attributes["imaginex.operator"], "tenant-1");
  // Chromium's fake microphone is sending audio over a loopback WebRTC connection
  const sent = await until("audio bytes sent", () =>
    page.evaluate(async () => {
      for (const pc of window.peerConnections) {
        const stats = await pc.getStats();
        for (const report of stats.values()) {
          if (report.type === "outbound-rtp" && report.kind === "audio" && report.bytesSent > 2000) {
            const pair = [...stats.values()].find((r) => r.type === "candidate-pair" && r.state === "succeeded");
            return { bytes: report.bytesSent, local: pair && stats.get(pair.localCandidateId).address };
          }
        }
      }
      return null;
    }),
  );
  assert.match(sent.local, /^127\./);
  await page.locator(".meter-label meter").waitFor();
  await shot("takeover.png");

  await page.getByRole("button", { name: "Hand back to the agent" }).click();
  await entry("Tell the agent a human spoke").locator(".status", { hasText: "✓" }).waitFor();
  const state = await agentState(CODE_A, ROOM_1, SECRET_A);
  assert.deepEqual([state.io.agent_audio, state.io.user_audio], [true, true]);
  assert.ok(state.context_entries.some((e) => e.key === "imaginex.console.takeover"));
  await until("the operator to leave the room", async () => !(await participants(ROOM_1)).some((p) => p.identity.startsWith("imaginex-operator-")));
  assert.equal(await page.getByRole("status").filter({ hasText: "You are live" }).count(), 0);
  await page.getByRole("button", { name: "Take over" }).waitFor();
});

test("end call asks first (Escape keeps the call), then the call leaves the list", async () => {
  await callItem(ROOM_2).click();
  await page.getByRole("heading", { name: ROOM_2, level: 2 }).waitFor();
  await page.getByRole("button", { name: "End call…" }).click();
  const dialog = page.getByRole("dialog", { name: "End this call?" });
  await dialog.waitFor();
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden" });
  assert.equal(await callItem(ROOM_2).count(), 1);
  await page.getByRole("button", { name: "End call…" }).click();
  await dialog.getByLabel("Reason (optional)").fill("Resolved by the supervisor");
  await dialog.getByLabel("Let what is playing and queued finish first").uncheck();
  await dialog.getByRole("button", { name: "End the call" }).click();
  await entry("End call").locator(".status", { hasText: "✓" }).waitFor();
  await transcript().locator(".line.system", { hasText: "Call ended" }).waitFor();
  await callItem(ROOM_2).waitFor({ state: "detached" });
  assert.equal(await callItem(ROOM_1).count(), 1);
});

test("CSRF and CSP from the browser's side: no token, another origin or an inline script get nothing", async () => {
  const path = `/console/api/v1/agent/${CODE_A}/speak`;
  const noToken = await page.evaluate(async (path) => {
    const response = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ message: "csrf-check one" }) });
    return [response.status, (await response.json()).error];
  }, path);
  assert.deepEqual(noToken, [403, "FORBIDDEN"]);

  // another origin on the same host (same site, so SameSite alone would let the cookie go):
  // its form post and its fetch carry the cookie, and are refused
  const attacker = createServer((request, response) => {
    response.writeHead(200, { "content-type": "text/html" }).end(`<!doctype html>
<form id="f" method="POST" action="${GATEWAY_URL}/console/api/logout" target="sink"></form><iframe name="sink"></iframe>
<script>
fetch(${JSON.stringify(GATEWAY_URL + path)}, { method: "POST", mode: "no-cors", credentials: "include", headers: { "content-type": "text/plain" }, body: JSON.stringify({ message: "csrf-check two" }) })
  .finally(() => { document.getElementById("f").submit(); setTimeout(() => { document.title = "done"; }, 1000); });
</script>`);
  });
  await new Promise((resolve) => attacker.listen(0, "127.0.0.1", resolve));
  const evil = await context.newPage();
  await evil.goto(`http://127.0.0.1:${attacker.address().port}/`);
  await evil.waitForFunction(() => document.title === "done");
  await evil.close();
  attacker.close();
  const session = await page.evaluate(async () => (await fetch("console/api/session")).status);
  assert.equal(session, 200, "the cross-origin form post did not sign the operator out");
  const history = await fetch(`${GATEWAY_URL}/v1/agent/${CODE_A}/get-history`, {
    method: "POST",
    headers: { "api-secret": SECRET_A, "content-type": "application/json" },
    body: JSON.stringify({ room_id: ROOM_1, limit: 200 }),
  });
  const said = (await history.json()).data.rooms[0].result.history.map((item) => item.text).join("\n");
  assert.doesNotMatch(said, /csrf-check/);

  // an injected inline script does not run: the CSP allows this origin's files only
  const ran = await page.evaluate(() => {
    const script = document.createElement("script");
    script.textContent = "window.injected = true";
    document.body.append(script);
    return window.injected === true;
  });
  assert.equal(ran, false);
  await until("the CSP report", () => page.evaluate(() => window.cspViolations.some((v) => v.startsWith("script-src"))));
  const others = await page.evaluate(() => window.cspViolations.filter((v) => !v.startsWith("script-src-elem inline")));
  assert.deepEqual(others, [], "the console itself breaks no rule of its CSP (take-over included)");
});

test("sign out ends the session; tenant B sees its own call only and cannot reach tenant A's", async () => {
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByLabel("API secret").waitFor();
  assert.equal(await page.evaluate(async () => (await fetch("console/api/session")).status), 401);
  assert.deepEqual(await context.cookies(), []);

  await page.getByLabel("API secret").fill(SECRET_B);
  await page.getByRole("button", { name: "Sign in" }).click();
  await callItem(ROOM_B).waitFor();
  assert.equal(await page.locator(".call-item").count(), 1);
  const reach = await page.evaluate(
    async ({ codeA, room }) => {
      const { csrf_token: csrf } = await (await fetch("console/api/session")).json();
      const headers = { "content-type": "application/json", "x-csrf-token": csrf };
      const events = await fetch(`console/api/v1/agent/${codeA}/events?room_id=${room}`);
      const speak = await fetch(`console/api/v1/agent/${codeA}/speak`, { method: "POST", headers, body: JSON.stringify({ message: "hello", room_id: room }) });
      const takeover = await fetch("console/api/takeover", { method: "POST", headers, body: JSON.stringify({ agent_code: codeA, room_id: room }) });
      return [events.status, speak.status, takeover.status, (await takeover.json()).error];
    },
    { codeA: CODE_A, room: ROOM_1 },
  );
  assert.deepEqual(reach, [404, 404, 404, "AGENT_NOT_FOUND"]);
  await callItem(ROOM_B).click();
  await page.getByRole("heading", { name: ROOM_B, level: 2 }).waitFor();
  await page.locator(".pill", { hasText: "Stream" }).locator("b", { hasText: "live" }).waitFor();
});
