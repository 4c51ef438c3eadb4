// The gateway client from Node against the real `imaginex-context gateway` process in front of
// a real agent (ContextPlugin on a real AgentSession in a room on the real server). Run by
// tests/integration/test_typescript_live.py, which starts them and gives GATEWAY_URL (a gateway
// at its defaults), LIMITED_GATEWAY_URL (the same with --rate-limit 1 --burst 2), API_SECRET,
// ROOM, and the docs' Node examples (DOCS_NODE, DOCS_NODE_EVENTS: paths of runnable modules).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { test } from "node:test";
import { GatewayClient, GatewayError } from "@imaginex/context-client/gateway";

const { GATEWAY_URL, LIMITED_GATEWAY_URL, API_SECRET, ROOM, DOCS_NODE, DOCS_NODE_EVENTS } = process.env;
const CODE = "A12345678";
assert.ok(GATEWAY_URL && LIMITED_GATEWAY_URL && API_SECRET && ROOM && DOCS_NODE && DOCS_NODE_EVENTS, "run by tests/integration/test_typescript_live.py");
const gateway = new GatewayClient({ baseUrl: GATEWAY_URL, apiSecret: API_SECRET });

test("health", async () => {
  const health = await gateway.health();
  assert.equal(health.status, "ok");
  assert.equal(typeof health.version, "string");
});

test("speak: the platform's answer, typed, with an Idempotency-Key made for the call", async () => {
  const answer = await gateway.speak(CODE, { message: "Hello from Node." });
  assert.equal(answer.success, true);
  assert.equal(answer.message, "Speech triggered successfully");
  assert.equal(answer.data.agent_code, CODE);
  assert.equal(answer.data.delivered_to_rooms, 1);
  assert.match(answer.data.request_id, /^[0-9a-f]{32}$/);
  assert.deepEqual(answer.data.rooms, [{ room: ROOM, delivered: true, error: null, message: null, duplicate: false }]);
});

test("the same Idempotency-Key gets the first answer again: delivered once", async () => {
  const key = `ts-key-${Date.now()}`;
  const first = await gateway.addContext(CODE, { context: "Order 42 ships tomorrow.", room_id: ROOM }, { idempotencyKey: key });
  const again = await gateway.addContext(CODE, { context: "Order 42 ships tomorrow.", room_id: ROOM }, { idempotencyKey: key });
  assert.equal(first.message, "Context added successfully");
  assert.equal(first.data.request_id, key);
  assert.deepEqual(again, first);
  // another body under the same key is refused, and nothing is sent
  await assert.rejects(
    gateway.addContext(CODE, { context: "Something else.", room_id: ROOM }, { idempotencyKey: key }),
    (error) => error instanceof GatewayError && error.status === 422 && error.code === "ID_REUSED" && !error.retryable,
  );
});

test("call control answers carry each room's result", async () => {
  const answer = await gateway.getHistory(CODE, { limit: 5, room_id: ROOM });
  assert.equal(answer.data.context_type, "get_history");
  const [room] = answer.data.rooms;
  assert.equal(room.delivered, true);
  assert.ok(Array.isArray(room.result.history));
});

test("refusals are GatewayErrors with the gateway's status and code", async () => {
  await assert.rejects(gateway.speak("NO_SUCH_AGENT", { message: "Hello?" }), (error) => {
    assert.ok(error instanceof GatewayError);
    assert.deepEqual([error.status, error.code, error.retryable], [404, "NO_ACTIVE_ROOMS", false]);
    assert.equal(error.body.success, false);
    assert.equal(error.message, error.body.message);
    return true;
  });
  await assert.rejects(gateway.speak(CODE, { message: "   " }), (e) => e.status === 400 && e.code === "VALIDATION_ERROR");
  const stranger = new GatewayClient({ baseUrl: GATEWAY_URL, apiSecret: "not-the-secret" });
  await assert.rejects(stranger.speak(CODE, { message: "Hi" }), (e) => e.status === 401 && e.code === "UNAUTHORIZED" && e.message === "Invalid api-secret");
});

test("429 is retried after its Retry-After, under the same key; without retries it is thrown", async () => {
  const limited = new GatewayClient({ baseUrl: LIMITED_GATEWAY_URL, apiSecret: API_SECRET, retries: 4 });
  const started = Date.now();
  const answers = await Promise.all([1, 2, 3].map((n) => limited.addContext(CODE, { context: `Burst ${n}.`, room_id: ROOM })));
  assert.deepEqual(answers.map((a) => a.success), [true, true, true]);
  assert.ok(Date.now() - started >= 900, "the third waited for the gateway's Retry-After");
  const impatient = new GatewayClient({ baseUrl: LIMITED_GATEWAY_URL, apiSecret: API_SECRET, retries: 0 });
  const burst = await Promise.allSettled([1, 2, 3, 4].map((n) => impatient.addContext(CODE, { context: `Again ${n}.`, room_id: ROOM })));
  const refused = burst.filter((r) => r.status === "rejected").map((r) => r.reason);
  assert.ok(refused.length >= 1);
  for (const error of refused) {
    assert.deepEqual([error.status, error.code, error.retryable], [429, "RATE_LIMITED", true]);
    assert.ok(error.retryAfter >= 1);
    assert.match(error.requestId, /^[0-9a-f]{32}$/);
  }
});

test("the documentation's Node example runs as written", async () => {
  const output = await runModule(DOCS_NODE);
  assert.match(output, /^Speech triggered successfully 1 [0-9a-f]{32}$/m);
  assert.match(output, /^404 NO_ACTIVE_ROOMS false$/m);
});

test("the events stream: typed events until call_ended, and the docs' example", async () => {
  const seen = [];
  const stream = (async () => {
    for await (const event of gateway.events(CODE, { roomId: ROOM, events: ["agent_transcript", "agent_state"] })) seen.push(event);
  })();
  // the docs' example leaves its loop at the first agent transcript; speak until it has
  const example = runModule(DOCS_NODE_EVENTS);
  let finished = false;
  example.finally(() => (finished = true)).catch(() => {});
  while (!finished) {
    await gateway.speak(CODE, { message: "Your order has shipped!", room_id: ROOM });
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  assert.match(await example, /^agent_transcript$/m);
  await waitFor(() => seen.some((e) => e.type === "agent_transcript" && e.text === "Your order has shipped!"));
  const ended = await gateway.endCall(CODE, { after_speech: false, reason: "node test done", room_id: ROOM });
  assert.equal(ended.message, "Call ending");
  await stream; // ends by itself after call_ended
  assert.equal(seen.at(-1).type, "call_ended");
  assert.equal(seen.at(-1).reason, "node test done");
  assert.ok(seen.some((e) => e.type === "agent_state"));
});

function runModule(path) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path], { env: { ...process.env, IMAGINEX_API_SECRET: API_SECRET } });
    let out = "";
    child.stdout.on("data", (chunk) => (out += chunk));
    child.stderr.on("data", (chunk) => (out += chunk));
    const timer = setTimeout(() => child.kill(), 60_000);
    child.on("close", (code) => {
      clearTimeout(timer);
      code === 0 ? resolve(out) : reject(new Error(`${path} exited with ${code}:\n${out}`));
    });
  });
}

async function waitFor(predicate, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail("timed out");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
