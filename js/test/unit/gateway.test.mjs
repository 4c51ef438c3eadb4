// GatewayClient's retry rules and the events stream's parsing, against a local HTTP server
// scripted per test (the real gateway process: test/gateway/live.test.mjs).
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { test } from "node:test";
import { GatewayClient, GatewayError } from "../../dist/gateway/index.js";

async function serve(script) {
  const requests = [];
  const server = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      requests.push({ method: request.method, url: request.url, headers: request.headers, body });
      const step = script[Math.min(requests.length - 1, script.length - 1)];
      step(response, request);
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const baseUrl = `http://127.0.0.1:${server.address().port}`;
  return { baseUrl, requests, close: () => new Promise((resolve) => server.close(resolve)) };
}

const json = (status, body, headers = {}) => (response) =>
  response.writeHead(status, { "content-type": "application/json", ...headers }).end(JSON.stringify(body));
const ok = json(200, { success: true, message: "Speech triggered successfully", data: { request_id: "k" } });
const refusal = (status, error, headers) => json(status, { success: false, error, message: `${error} sentence` }, headers);
/** One event of the events stream, as the gateway frames it. */
const sse = (seq, type, extra = {}) => `id: ${seq}\nevent: ${type}\ndata: ${JSON.stringify({ type, seq, timestamp: "t", ...extra })}\n\n`;
/** An events stream that sends `frames`, then (unless `breaksOff` is false) breaks off mid-call. */
const stream = (frames, { breaksOff = true } = {}) => (response) => {
  response.writeHead(200, { "content-type": "text/event-stream" });
  for (const frame of frames) response.write(frame);
  if (breaksOff) setTimeout(() => response.destroy(), 20);
};

test("an Idempotency-Key is made once and reused on every retry; the body and headers are the platform's", async () => {
  const server = await serve([refusal(503, "LIVEKIT_UNAVAILABLE"), refusal(504, "TIMEOUT"), ok]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl + "/", apiSecret: "s3cret", backoffMs: 1 });
  const answer = await gateway.speak("A 1", { message: "Hi", room_id: "r" });
  assert.equal(answer.message, "Speech triggered successfully");
  const keys = server.requests.map((r) => r.headers["idempotency-key"]);
  assert.equal(new Set(keys).size, 1);
  assert.match(keys[0], /^[0-9a-f]{32}$/);
  assert.deepEqual(server.requests.map((r) => [r.method, r.url]), Array(3).fill(["POST", "/v1/agent/A%201/speak"]));
  assert.equal(server.requests[0].headers["api-secret"], "s3cret");
  assert.equal(server.requests[0].headers["content-type"], "application/json");
  assert.deepEqual(JSON.parse(server.requests[0].body), { message: "Hi", room_id: "r" });
  await server.close();
});

test("429 and 409 REQUEST_IN_PROGRESS wait for Retry-After", async () => {
  const server = await serve([refusal(429, "RATE_LIMITED", { "retry-after": "1" }), refusal(409, "REQUEST_IN_PROGRESS", { "retry-after": "0.3" }), ok]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s", backoffMs: 1 });
  const started = performance.now();
  await gateway.addContext("A1", { context: "x" }, { idempotencyKey: "mine" });
  assert.ok(performance.now() - started >= 1_250, "waited 1 s then 0.3 s");
  assert.deepEqual(server.requests.map((r) => r.headers["idempotency-key"]), ["mine", "mine", "mine"]);
  await server.close();
});

test("final refusals are thrown at once, with status, code, body and key", async () => {
  for (const [status, code] of [[400, "VALIDATION_ERROR"], [401, "UNAUTHORIZED"], [404, "NO_ACTIVE_ROOMS"], [409, "BUSY"], [413, "PAYLOAD_TOO_LARGE"], [422, "ID_REUSED"], [502, "INTERNAL_ERROR"]]) {
    const server = await serve([refusal(status, code)]);
    const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s", backoffMs: 1 });
    await assert.rejects(gateway.interrupt("A1", {}, { idempotencyKey: "k1" }), (e) => {
      assert.ok(e instanceof GatewayError);
      assert.deepEqual([e.status, e.code, e.message, e.retryable, e.requestId], [status, code, `${code} sentence`, false, "k1"]);
      assert.equal(e.body.error, code);
      return true;
    });
    assert.equal(server.requests.length, 1, code);
    await server.close();
  }
});

test("retries run out: the last refusal is thrown, retryable", async () => {
  const server = await serve([refusal(503, "NOT_READY")]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s", backoffMs: 1, retries: 2 });
  await assert.rejects(gateway.endCall("A1"), (e) => e.status === 503 && e.code === "NOT_READY" && e.retryable);
  assert.equal(server.requests.length, 3);
  await server.close();
});

test("no gateway there, or no answer in time: retried, then GATEWAY_UNREACHABLE / TIMEOUT", async () => {
  const closed = await serve([ok]);
  await closed.close();
  const nobody = new GatewayClient({ baseUrl: closed.baseUrl, apiSecret: "s", backoffMs: 1, retries: 1 });
  await assert.rejects(nobody.speak("A1", { message: "Hi" }), (e) => e.code === "GATEWAY_UNREACHABLE" && e.status === 0 && e.retryable);
  const slow = await serve([() => {}]);
  const impatient = new GatewayClient({ baseUrl: slow.baseUrl, apiSecret: "s", backoffMs: 1, retries: 1, timeoutMs: 100 });
  await assert.rejects(impatient.speak("A1", { message: "Hi" }), (e) => e.code === "TIMEOUT" && e.retryable);
  assert.equal(slow.requests.length, 2);
  slow.close();
});

test("the caller's AbortSignal stops the call and its retries", async () => {
  const server = await serve([refusal(503, "LIVEKIT_UNAVAILABLE", { "retry-after": "5" })]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s" });
  const controller = new AbortController();
  setTimeout(() => controller.abort(new Error("user left")), 100);
  await assert.rejects(gateway.speak("A1", { message: "Hi" }, { signal: controller.signal }), /user left/);
  await server.close();
});

test("the events stream: SSE parsed (comments, CRLF, multi-line data), ended after call_ended", async () => {
  const server = await serve([
    (response) => {
      response.writeHead(200, { "content-type": "text/event-stream" });
      response.write(": heartbeat\n\n");
      response.write('event: agent_state\r\ndata: {"type":"agent_state","old_state":"idle",\r\ndata: "new_state":"speaking","timestamp":"t"}\r\n\r\n');
      const transcript = JSON.stringify({ type: "user_transcript", text: "héllo 👋", final: true, timestamp: "t" });
      const bytes = Buffer.from(`event: user_transcript\ndata: ${transcript}\n\n`);
      response.write(bytes.subarray(0, 40)); // split inside a multi-byte character
      setTimeout(() => {
        response.write(bytes.subarray(40));
        response.write('event: call_ended\ndata: {"type":"call_ended","reason":"user_initiated","timestamp":"t"}\n\n');
        response.write('event: agent_state\ndata: {"type":"agent_state"}\n\n'); // never read
      }, 20);
    },
  ]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s3cret" });
  const events = [];
  for await (const event of gateway.events("A1", { roomId: "room 1", events: ["agent_state", "user_transcript"], interim: true })) events.push(event);
  assert.deepEqual(events.map((e) => e.type), ["agent_state", "user_transcript", "call_ended"]);
  assert.equal(events[0].new_state, "speaking");
  assert.equal(events[1].text, "héllo 👋");
  const [request] = server.requests;
  assert.equal(request.url, "/v1/agent/A1/events?room_id=room+1&events=agent_state%2Cuser_transcript&interim=true");
  assert.equal(request.headers["api-secret"], "s3cret");
  assert.equal(request.headers.accept, "text/event-stream");
  server.close();
});

test("the events stream refused: a GatewayError before any event", async () => {
  const server = await serve([refusal(401, "UNAUTHORIZED")]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "wrong" });
  await assert.rejects(async () => {
    for await (const _ of gateway.events("A1", { roomId: "r", onOpen: () => assert.fail("not opened") })) assert.fail("no event expected");
  }, (e) => e instanceof GatewayError && e.status === 401 && e.code === "UNAUTHORIZED");
  await server.close();
});

test("options are checked", () => {
  assert.throws(() => new GatewayClient({ baseUrl: "http://127.0.0.1:1", apiSecret: "" }), /apiSecret or csrfToken/);
  assert.throws(() => new GatewayClient({ baseUrl: "not a url", apiSecret: "s" }));
  assert.throws(() => new GatewayClient({ baseUrl: "http://127.0.0.1:1", apiSecret: "s", retries: -1 }));
});

test("v1.3: the events stream resumes where it broke off, with Last-Event-ID, nothing twice", async () => {
  const server = await serve([
    stream([sse(5, "agent_transcript", { text: "one" }), sse(6, "agent_transcript", { text: "two" })]),
    stream(
      [
        sse(6, "agent_transcript", { text: "two", replay: true }), // overlap: skipped
        sse(7, "agent_transcript", { text: "three", replay: true }),
        sse(8, "call_ended", { reason: "done" }),
      ],
      { breaksOff: false },
    ),
  ]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s3cret" });
  const events = [];
  for await (const event of gateway.events("A1", { roomId: "r", lastEventId: 4, resumeAttempts: 2 })) events.push([event.seq, event.text ?? event.reason]);
  assert.deepEqual(events, [[5, "one"], [6, "two"], [7, "three"], [8, "done"]]);
  assert.deepEqual(server.requests.map((r) => r.headers["last-event-id"]), ["4", "6"]);
  await server.close();
});

test("v1.3: without resumeAttempts a broken stream is an error; a refusal on resuming is final", async () => {
  const server = await serve([stream([sse(1, "agent_state")]), refusal(404, "NO_ACTIVE_ROOMS")]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s3cret" });
  await assert.rejects(async () => {
    for await (const _ of gateway.events("A1", { roomId: "r" })) { /* the one event */ }
  }, (e) => e instanceof GatewayError && e.code === "GATEWAY_UNREACHABLE");
  await assert.rejects(async () => {
    for await (const _ of gateway.events("A1", { roomId: "r", resumeAttempts: 3 })) { /* */ }
  }, (e) => e instanceof GatewayError && e.status === 404);
  await server.close();
});

test("v1.3: resumeAttempts bounds the resumes in a row without an event, then it is an error", async () => {
  const empty = stream([]);
  const server = await serve([stream([sse(1, "agent_state")]), empty, empty, empty]);
  const gateway = new GatewayClient({ baseUrl: server.baseUrl, apiSecret: "s3cret" });
  const seen = [];
  await assert.rejects(async () => {
    for await (const event of gateway.events("A1", { roomId: "r", resumeAttempts: 2 })) seen.push(event.seq);
  }, (e) => e instanceof GatewayError && e.code === "GATEWAY_UNREACHABLE" && e.retryable && /broke off 3 times in a row/.test(e.message));
  assert.deepEqual(seen, [1]);
  assert.deepEqual(server.requests.map((r) => r.headers["last-event-id"]), [undefined, "1", "1"]);
  await server.close();
});

test("session mode: no api-secret; the CSRF token on every POST (asked each time), none on the events GET", async () => {
  const endedStream = (response) => {
    response.writeHead(200, { "content-type": "text/event-stream" });
    response.end('event: call_ended\ndata: {"type":"call_ended","reason":"r","timestamp":"t"}\n\n');
  };
  const server = await serve([ok, ok, endedStream]);
  let token = "csrf-1";
  const gateway = new GatewayClient({ baseUrl: server.baseUrl + "/console/api", csrfToken: () => token });
  await gateway.removeContext("A1", { key: "order", room_id: "r" });
  token = "csrf-2";
  await gateway.getState("A1", { room_id: "r" });
  let opened = 0;
  for await (const _ of gateway.events("A1", { roomId: "r", playout: true, onOpen: () => opened++ }));
  assert.equal(opened, 1);
  const [remove, state, events] = server.requests;
  assert.deepEqual([remove.url, state.url], ["/console/api/v1/agent/A1/remove-context", "/console/api/v1/agent/A1/get-state"]);
  assert.deepEqual([remove.headers["x-csrf-token"], state.headers["x-csrf-token"]], ["csrf-1", "csrf-2"]);
  assert.deepEqual(JSON.parse(remove.body), { key: "order", room_id: "r" });
  assert.equal(events.url, "/console/api/v1/agent/A1/events?room_id=r&playout=true");
  assert.equal(events.headers["x-csrf-token"], undefined);
  for (const request of server.requests) assert.equal(request.headers["api-secret"], undefined);
  await server.close();
});

test("one way to authenticate: an apiSecret or a csrfToken, not both, not neither", () => {
  assert.throws(() => new GatewayClient({ baseUrl: "http://127.0.0.1:1" }), /apiSecret or csrfToken/);
  assert.throws(() => new GatewayClient({ baseUrl: "http://127.0.0.1:1", apiSecret: "s", csrfToken: "t" }), /apiSecret or csrfToken/);
  assert.ok(new GatewayClient({ baseUrl: "http://127.0.0.1:1", csrfToken: "t" }));
});
