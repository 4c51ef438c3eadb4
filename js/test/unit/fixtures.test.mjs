// The shared fixtures (fixtures/protocol.json, read by the Python tests too) hold for the
// TypeScript client: the same names, codes, RPC failure table, signatures byte for byte, wire
// examples, refusals and agent choice.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import * as core from "../../dist/index.js";
import { chooseAgent, rpcFailure } from "../../dist/room/index.js";

const FIXTURES = JSON.parse(readFileSync(new URL("../../../fixtures/protocol.json", import.meta.url), "utf8"));

test("names, message and event types, error codes and the retryable ones", () => {
  const names = FIXTURES.names;
  assert.equal(core.CONTEXT_TOPIC, names.context_topic);
  assert.equal(core.ACK_TOPIC, names.ack_topic);
  assert.equal(core.RPC_METHOD, names.rpc_method);
  assert.equal(core.AGENT_CODE_ATTRIBUTE, names.agent_code_attribute);
  assert.equal(core.SENDER_ATTRIBUTE, names.sender_attribute);
  assert.equal(core.MAX_PAYLOAD_BYTES, names.max_payload_bytes);
  assert.equal(core.MAX_ID_LENGTH, names.max_id_length);
  assert.deepEqual([...core.MESSAGE_TYPES], FIXTURES.message_types);
  assert.deepEqual([...core.SESSION_EVENT_TYPES], FIXTURES.session_event_types);
  assert.deepEqual([...core.ERROR_CODES], FIXTURES.error_codes);
  assert.deepEqual([...core.RETRYABLE_CODES].sort(), FIXTURES.retryable_codes);
  for (const code of FIXTURES.error_codes) {
    assert.equal(new core.ContextError(code, "x").retryable, FIXTURES.retryable_codes.includes(code), code);
  }
});

test("the one RPC failure table", () => {
  const table = FIXTURES.rpc_failures;
  for (const [code, expected] of [...Object.entries(table.by_livekit_code), ["1500", table.otherwise], ["1999", table.otherwise]]) {
    const error = rpcFailure({ code: Number(code), message: "x" }, "agent-1", "r1");
    assert.deepEqual({ code: error.code, retryable: error.retryable }, expected, `LiveKit code ${code}`);
    assert.equal(error.requestId, "r1");
    assert.ok(error.message.includes("agent-1") || error.code !== "TIMEOUT", error.message);
  }
});

for (const vector of FIXTURES.signatures) {
  test(`signature vector: ${vector.name}`, async () => {
    const options = { timestamp: vector.timestamp, sender: vector.sender };
    assert.equal(core.signedMessage(vector.body, vector.timestamp, vector.sender), vector.message);
    assert.equal(await core.computeSignature(vector.body, vector.secret, options), vector.signature);
    // the envelope is byte for byte what Python's sign_request writes
    assert.equal(await core.signRequest(vector.body, vector.secret, options), vector.envelope);
    assert.equal(await core.signRequest(vector.body, new TextEncoder().encode(vector.secret), options), vector.envelope);
  });
}

test("a Signer signs a retry of the same body with a later timestamp", async () => {
  const signer = new core.Signer("s3cret", "imaginex-gateway");
  const first = JSON.parse(await signer.sign('{"type":"get_state","id":"g"}'));
  const second = JSON.parse(await signer.sign('{"type":"get_state","id":"g"}'));
  assert.equal(second.timestamp, first.timestamp + 1);
  assert.notEqual(second.signature, first.signature);
  assert.equal(second.sender, "imaginex-gateway");
  const other = JSON.parse(await signer.sign('{"type":"get_state","id":"h"}'));
  assert.ok(other.timestamp <= second.timestamp);
});

for (const example of FIXTURES.requests) {
  test(`request example is valid: ${example.name}`, () => {
    assert.equal(core.requestProblem(example.sent), null);
    assert.deepEqual(core.prepareRequest(example.sent), example.sent);
  });
}

for (const example of FIXTURES.invalid_requests) {
  test(`refused before sending, as the agent would: ${example.name}`, () => {
    assert.equal(core.requestProblem(example.request), example.message);
    assert.equal(core.requestIdOf(example.request), example.id);
    assert.throws(
      () => core.prepareRequest(example.request),
      (error) =>
        error instanceof core.ContextError &&
        error.code === example.error &&
        error.message === example.message &&
        error.retryable === false,
    );
  });
}

for (const example of FIXTURES.server_messages) {
  test(`server message is read: ${example.name}`, () => {
    const text = JSON.stringify(example.wire);
    for (const raw of [text, new TextEncoder().encode(text)]) {
      const message = core.parseServerMessage(raw);
      assert.deepEqual(message, example.wire);
      const kind = example.model;
      assert.equal(core.isSuccessAck(message), kind === "SuccessAck");
      assert.equal(core.isErrorAck(message), kind === "ErrorAck");
      assert.equal(core.isSpeechEvent(message), kind.startsWith("Speech"));
      assert.equal(core.isSessionEvent(message), !kind.endsWith("Ack") && !kind.startsWith("Speech"));
    }
  });
}

test("what is not a protocol message reads as null", () => {
  for (const raw of ["", "not json", "[]", "null", '{"type":"ack"}', '{"type":"mystery"}', '{"success":true}']) {
    assert.equal(core.parseServerMessage(raw), null, raw);
  }
});

for (const example of FIXTURES.agent_choice) {
  test(`agent choice: ${example.name}`, () => {
    const choose = () =>
      chooseAgent(example.participants, { agentCode: example.agent_code, room: "shop-42", exclude: example.exclude });
    if (example.error) {
      assert.throws(choose, (error) => {
        assert.deepEqual({ code: error.code, message: error.message, retryable: error.retryable }, example.error);
        return true;
      });
    } else {
      assert.equal(choose(), example.chosen ?? null);
    }
  });
}

test("request ids are 32 hex digits, never twice the same", () => {
  const ids = new Set(Array.from({ length: 1000 }, () => core.newRequestId()));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.match(id, /^[0-9a-f]{32}$/);
});

test("the packet limit counts UTF-8 bytes", () => {
  core.checkSize("é".repeat(7680), "r");
  assert.throws(() => core.checkSize("é".repeat(7681), "r"), (error) => error.code === "PAYLOAD_TOO_LARGE" && error.message === "The message is 15362 bytes once encoded; the limit is 15360 bytes.");
});
