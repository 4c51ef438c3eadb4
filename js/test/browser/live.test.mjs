// The room client in a real browser, on the real server, against a real agent worker
// (tests/integration/browser_worker.py: ContextPlugin on a real AgentSession). Run by
// tests/integration/test_typescript_live.py, which starts the server and the worker, dispatches
// the agent into ROOM and mints the browser's token (identity web-user, which the agent trusts).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { openBrowserPage } from "./harness.mjs";

const { LIVEKIT_URL, BROWSER_TOKEN, DOCS_TOKEN, ROOM, DOCS_EXAMPLE, README_EXAMPLE } = process.env;
const AGENT_CODE = "A12345678";
const WAIT_MS = 30_000;
let browser;
let page;

before(async () => {
  assert.ok(LIVEKIT_URL && BROWSER_TOKEN && DOCS_TOKEN && ROOM && DOCS_EXAMPLE && README_EXAMPLE, "run by tests/integration/test_typescript_live.py");
  browser = await openBrowserPage({ modules: { "/docs-example.mjs": DOCS_EXAMPLE, "/readme-example.mjs": README_EXAMPLE } });
  page = browser.page;
  page.setDefaultTimeout(90_000);
});

after(async () => {
  if (process.exitCode) console.log(browser?.consoleLines.join("\n"));
  await browser?.close();
});

/** Runs `fn` in the page; a thrown error comes back as its fields (code, message, ...). */
async function inPage(fn, arg) {
  return page.evaluate(fn, arg);
}

test("joins the real server from Chromium and finds the agent by its code", async () => {
  const found = await inPage(
    async ({ url, token, code, wait }) => {
      const room = new LK.Room();
      await room.connect(url, token);
      window.room = room;
      window.client = new IMX.ContextClient(room, { agentCode: code, agentTimeoutMs: wait });
      window.received = [];
      return { agent: await window.client.findAgent(), state: room.state, name: room.name };
    },
    { url: LIVEKIT_URL, token: BROWSER_TOKEN, code: AGENT_CODE, wait: WAIT_MS },
  );
  assert.equal(found.state, "connected");
  assert.equal(found.name, ROOM);
  assert.match(found.agent, /^agent-/);
});

test("WebRTC connected over loopback addresses only", async () => {
  const pairs = await inPage(async () => {
    const deadline = Date.now() + 20_000;
    for (;;) {
      const pairs = [];
      for (const pc of window.peerConnections) {
        const stats = await pc.getStats();
        for (const report of stats.values()) {
          if (report.type !== "candidate-pair" || report.state !== "succeeded") continue;
          const local = stats.get(report.localCandidateId);
          const remote = stats.get(report.remoteCandidateId);
          pairs.push([local.address ?? local.ip, remote.address ?? remote.ip]);
        }
      }
      if (pairs.length || Date.now() > deadline) return pairs;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  });
  assert.ok(pairs.length > 0, "no connected candidate pair");
  for (const [local, remote] of pairs) {
    assert.match(local, /^127\./, `local candidate ${local}`);
    assert.match(remote, /^127\./, `remote candidate ${remote}`);
  }
});

test("the README's example runs as written, on the page's room", async () => {
  const output = await captureConsole(async () => {
    await import("/readme-example.mjs");
  });
  assert.match(output.join("\n"), /^speech_\S+ played out$/m);
});

test("subscribe: the agent's session events arrive as typed events", async () => {
  const ack = await inPage(async () => {
    const events = await window.client.subscribe({
      events: ["user_transcript", "agent_transcript", "conversation_item"],
    });
    window.events = events;
    window.subscriptionDone = (async () => {
      for await (const event of events) window.received.push(event);
      return { callEnded: events.callEnded, dropped: events.dropped };
    })();
    return events.ack;
  });
  assert.equal(ack.success, true);
  assert.equal(ack.data.context_type, "subscribe");
  assert.deepEqual(ack.data.events.sort(), ["agent_transcript", "call_ended", "conversation_item", "user_transcript"]);
});

test("speak: the ack, then speech_started and speech_finished of that speech", async () => {
  const { ack, id, started, finished } = await inPage(async (wait) => {
    const speech = await window.client.speak("Hello from the browser.");
    const started = await speech.started({ timeoutMs: wait });
    const finished = await speech.finished({ timeoutMs: wait });
    return { ack: speech.ack, id: speech.id, started, finished };
  }, WAIT_MS);
  assert.equal(ack.success, true);
  assert.equal(ack.id, id);
  assert.match(id, /^[0-9a-f]{32}$/);
  assert.equal(ack.message, "Speech triggered successfully");
  assert.equal(ack.data.agent_code, AGENT_CODE);
  assert.equal(ack.data.room_id, ROOM);
  assert.equal(ack.data.method, "say");
  assert.equal(started.id, id);
  assert.equal(started.speech_id, ack.data.speech_id);
  assert.equal(finished.speech_id, ack.data.speech_id);
  assert.equal(finished.interrupted, false);
  assert.ok(finished.played_s > 0, `played_s ${finished.played_s}`);
  const transcript = await waitForEvent((e) => e.type === "agent_transcript" && e.speech_id === ack.data.speech_id);
  assert.equal(transcript.text, "Hello from the browser.");
});

test("add_context reaches the LLM's next call: the agent answers the user from it", async () => {
  const ack = await inPage(() => window.client.addContext("The customer is John, a VIP.", { key: "customer" }));
  assert.equal(ack.message, "Context added successfully");
  assert.equal(ack.data.key, "customer");
  // the user speaks (the worker's scripted STT hears it): a user turn, then the LLM's reply
  await inPage(async () => {
    const agent = await window.client.findAgent();
    await window.room.localParticipant.performRpc({ destinationIdentity: agent, method: "test.hear", payload: "What do you know about me?" });
  });
  const heard = await waitForEvent((e) => e.type === "user_transcript");
  assert.equal(heard.text, "What do you know about me?");
  assert.equal(heard.final, true);
  const reply = await waitForEvent((e) => e.type === "agent_transcript" && e.text.startsWith("Here is what I know"));
  assert.equal(reply.text, "Here is what I know: The customer is John, a VIP.");
  const state = await inPage(() => window.client.getState());
  assert.deepEqual(
    state.context_entries.map((e) => [e.key, e.chars]),
    [["customer", "The customer is John, a VIP.".length]],
  );
});

test("an error ack comes back as a ContextError with the agent's code", async () => {
  const refused = await inPage(async () => {
    try {
      await window.client.cancel("no-such-request", { id: "cancel-1" });
      return null;
    } catch (error) {
      return { name: error.name, code: error.code, retryable: error.retryable, requestId: error.requestId, ack: error.ack, isContextError: error instanceof IMX.ContextError };
    }
  });
  assert.deepEqual(
    { ...refused, ack: undefined },
    { name: "ContextError", code: "NOT_FOUND", retryable: false, requestId: "cancel-1", ack: undefined, isContextError: true },
  );
  assert.equal(refused.ack.success, false);
  assert.equal(refused.ack.error, "NOT_FOUND");
  assert.equal(refused.ack.id, "cancel-1");
  // and a request the agent would refuse is refused before it leaves the page
  const invalid = await inPage(async () => {
    try {
      await window.client.speak("\u200b");
    } catch (error) {
      return { code: error.code, message: error.message, ack: error.ack };
    }
  });
  assert.deepEqual(invalid, {
    code: "VALIDATION_ERROR",
    message: "Field 'message' must contain visible text, not only invisible or control characters.",
    ack: null,
  });
});

test("a retry keeps the request's id: its lost answer is answered again, the speech said once", async () => {
  const text = "Said once, though sent twice.";
  const result = await inPage(
    async ({ text, wait }) => {
      // the worker loses the first answer to a lose-once- request: the client times out and retries
      const speech = await window.client.speak(text, { id: "lose-once-1", timeoutMs: 3_000 });
      const finished = await speech.finished({ timeoutMs: wait });
      const history = await window.client.getHistory({ limit: 50 });
      return { ack: speech.ack, finished, said: history.items.filter((item) => item.text === text).length };
    },
    { text, wait: WAIT_MS },
  );
  assert.equal(result.ack.id, "lose-once-1");
  assert.equal(result.ack.duplicate, true); // the second attempt found the first applied
  assert.equal(result.finished.interrupted, false);
  assert.equal(result.said, 1);
  const transcripts = (await received()).filter((e) => e.type === "agent_transcript" && e.text === text);
  assert.equal(transcripts.length, 1);
});

test("over data packets too: the same request through the data channel", async () => {
  const ack = await inPage(async () => {
    const viaData = new IMX.ContextClient(window.room, { agentCode: "A12345678", via: "data" });
    try {
      return await viaData.addContext("Prefers email.", { key: "contact", id: "data-1" });
    } finally {
      await viaData.close();
    }
  });
  assert.equal(ack.id, "data-1");
  assert.equal(ack.data.key, "contact");
});

test("the documentation's browser example runs as written", async () => {
  const output = await inPage(
    async ({ url, token }) => {
      window.serverUrl = url;
      window.token = token;
      const lines = [];
      const log = console.log;
      console.log = (...args) => (lines.push(args.map(String).join(" ")), log(...args));
      try {
        await import("/docs-example.mjs");
      } finally {
        console.log = log;
      }
      return lines;
    },
    { url: LIVEKIT_URL, token: DOCS_TOKEN },
  );
  assert.ok(output.some((line) => line.startsWith("spoken:")), output.join("\n"));
});

test("end_call: the subscription ends after call_ended", async () => {
  const ack = await inPage(() => window.client.endCall({ reason: "browser test done" }));
  assert.equal(ack.message, "Call ending");
  const done = await inPage(() => window.subscriptionDone);
  assert.equal(done.callEnded.type, "call_ended");
  assert.equal(done.callEnded.reason, "browser test done");
  const events = await received();
  assert.equal(events.at(-1).type, "call_ended");
});

/** Runs `fn` in the page and returns what it logged. */
async function captureConsole(fn, arg) {
  return inPage(
    async ({ source, arg }) => {
      const lines = [];
      const log = console.log;
      console.log = (...args) => (lines.push(args.map(String).join(" ")), log(...args));
      try {
        await (0, eval)(`(${source})`)(arg);
      } finally {
        console.log = log;
      }
      return lines;
    },
    { source: fn.toString(), arg },
  );
}

async function received() {
  return inPage(() => window.received);
}

async function waitForEvent(predicate) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const found = (await received()).find(predicate);
    if (found) return found;
    if (Date.now() > deadline) assert.fail(`no such event; received: ${JSON.stringify(await received())}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
