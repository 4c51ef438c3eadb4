// ContextClient's behaviour (Python: sender/), over the in-memory room of fake-room.mjs.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { AckTimeoutError, ContextClient, ContextError, PlayoutTimeoutError, SpeechFailedError } from "../../dist/room/index.js";
import { FakeAgent, FakeParticipant, FakeRoom } from "./fake-room.mjs";

const TS = "2026-01-15T10:30:00.000Z";
const FIXTURES = JSON.parse(readFileSync(new URL("../../../fixtures/protocol.json", import.meta.url), "utf8"));

function setup(options = {}) {
  const room = new FakeRoom();
  const agent = new FakeAgent(room);
  room.join(agent);
  const client = new ContextClient(room, { agentCode: "A1", backoffMs: 1, timeoutMs: 1_000, ...options });
  return { room, agent, client };
}

const sent = (agent) => agent.requests.map((r) => r.request);

test("each call sends the request the Python client sends", async () => {
  const { agent, client } = setup();
  await client.speak("Hi", { id: "s1" });
  await client.speak(null, { id: "s2", instructions: "Greet them.", mode: "if_idle", endCallAfter: true, addToHistory: false });
  await client.addContext("VIP", { id: "c1", key: "customer" });
  await client.removeContext("customer", { id: "c2" });
  await client.endCall({ id: "e1", reason: "done" });
  await client.interrupt({ id: "i1", force: true });
  await client.cancel("s1", { id: "x1" });
  await client.updateIO({ agentAudio: false }, { id: "m1" });
  await client.updateInstructions("Be brief.", { id: "u1" });
  await client.resetInstructions({ id: "u2" });
  await client.userMessage("Hello", { id: "um1" });
  const code = { agent_code: "A1", protocol: "1.3" };
  assert.deepEqual(sent(agent), [
    { type: "speak", id: "s1", message: "Hi", allow_interruptions: true, interrupt: false, ...code },
    { type: "speak", id: "s2", instructions: "Greet them.", allow_interruptions: true, interrupt: false, mode: "if_idle", end_call_after: true, add_to_history: false, ...code },
    { type: "add_context", id: "c1", context: "VIP", key: "customer", role: "system", trigger_reply: false, scope: "persistent", ...code },
    { type: "remove_context", key: "customer", id: "c2", ...code },
    { type: "end_call", id: "e1", after_speech: true, reason: "done", ...code },
    { type: "interrupt", id: "i1", force: true, ...code },
    { type: "cancel", id: "x1", target_id: "s1", ...code },
    { type: "update_io", id: "m1", agent_audio: false, ...code },
    { type: "update_instructions", id: "u1", instructions: "Be brief.", mode: "append", ...code },
    { type: "reset_instructions", id: "u2", ...code },
    { type: "user_message", id: "um1", text: "Hello", respond: true, interrupt: false, ...code },
  ]);
});

test("a lost answer is retried under the same id and answered as a duplicate", async () => {
  const { room, agent, client } = setup();
  agent.faults.push("lose");
  const speech = await client.speak("Once.");
  assert.equal(speech.ack.duplicate, true);
  assert.equal(room.rpcCalls.length, 2);
  assert.equal(room.rpcCalls[0].payload, room.rpcCalls[1].payload);
  assert.equal(agent.applied.size, 1);
  assert.match(speech.id, /^[0-9a-f]{32}$/);
  assert.equal(speech.ack.id, speech.id);
});

test("RATE_LIMITED waits at least its retry_after, then the same id goes again", async () => {
  const { room, agent, client } = setup();
  agent.faults.push({ error: "RATE_LIMITED", retry_after: 0.3 });
  const started = performance.now();
  const ack = await client.addContext("later", { id: "rl-1" });
  assert.ok(performance.now() - started >= 290);
  assert.equal(ack.id, "rl-1");
  assert.equal(room.rpcCalls.length, 2);
});

test("retryable failures give up after `retries`; final ones at once", async () => {
  const { room, agent, client } = setup({ retries: 2 });
  agent.faults.push({ code: 1400 }, { code: 1400 }, { code: 1400 });
  await assert.rejects(client.speak("Hi", { id: "nr" }), (e) => e.code === "NOT_READY" && e.retryable && e.requestId === "nr" && e.ack === null);
  assert.equal(room.rpcCalls.length, 3);
  for (const [fault, code] of [[{ error: "BUSY" }, "BUSY"], [{ code: 1402 }, "PAYLOAD_TOO_LARGE"], [{ code: 1500 }, "INTERNAL_ERROR"], [{ code: 1403 }, "LIVEKIT_UNAVAILABLE"]]) {
    room.rpcCalls.length = 0;
    agent.faults.push(fault);
    await assert.rejects(client.speak("Hi"), (e) => e instanceof ContextError && e.code === code && !e.retryable);
    assert.equal(room.rpcCalls.length, 1, code);
  }
});

test("an error ack becomes a ContextError carrying the ack", async () => {
  const { agent, client } = setup();
  agent.faults.push({ error: "NOT_FOUND", message: "No speech." });
  await assert.rejects(client.cancel("nope", { id: "c" }), (error) => {
    assert.equal(error.name, "ContextError");
    assert.deepEqual([error.code, error.message, error.requestId, error.retryable], ["NOT_FOUND", "No speech.", "c", false]);
    assert.deepEqual(error.ack, { type: "ack", id: "c", success: false, error: "NOT_FOUND", message: "No speech." });
    return true;
  });
});

test("no answer in time: AckTimeoutError after every attempt, the same id each time", async () => {
  const { room, agent, client } = setup({ retries: 1, timeoutMs: 50 });
  agent.faults.push("hang", "hang");
  await assert.rejects(client.addContext("x", { id: "t1" }), (e) => {
    assert.ok(e instanceof AckTimeoutError && e instanceof ContextError);
    assert.deepEqual([e.code, e.attempts, e.retryable, e.requestId], ["TIMEOUT", 2, true, "t1"]);
    assert.equal(e.message, "No ack from agent 'agent-1' within 0.05 s (2 attempts).");
    return true;
  });
  assert.deepEqual(room.rpcCalls.map((c) => JSON.parse(c.payload).id), ["t1", "t1"]);
});

test("an RPC answer that is another request's ack is not taken for this one", async () => {
  const { room, client } = setup();
  const agent = room.agents.get("agent-1");
  agent.onRpc = async () => JSON.stringify({ type: "ack", id: "someone-else", success: true, message: "ok", data: {} });
  await assert.rejects(client.speak("Hi"), (e) => e.code === "INTERNAL_ERROR" && !e.retryable && /another request/.test(e.message));
});

test("a request the agent would refuse never leaves", async () => {
  const { room, client } = setup();
  await assert.rejects(client.speak("  "), (e) => e.code === "VALIDATION_ERROR" && e.message === "Field 'message' must not be empty.");
  await assert.rejects(client.speak("x".repeat(16_000)), (e) => e.code === "PAYLOAD_TOO_LARGE");
  await assert.rejects(client.send({ type: "launch_rockets" }), (e) => e.code === "VALIDATION_ERROR");
  assert.equal(room.rpcCalls.length, 0);
});

test("speech events that arrive before the ack are kept; only the agent's count", async () => {
  const { room, agent, client } = setup({ playoutTimeoutMs: 200 });
  agent.beforeAnswer = (request) => {
    const base = { id: request.id, speech_id: `speech_${request.id}`, timestamp: TS };
    room.deliver("impostor", { type: "speech_finished", ...base, interrupted: true });
    agent.send({ type: "speech_started", ...base });
    agent.send({ type: "speech_finished", ...base, interrupted: false, played_s: 1.5 });
  };
  const speech = await client.speak("Hello", { id: "p1" });
  assert.deepEqual(await speech.started(), { type: "speech_started", id: "p1", speech_id: "speech_p1", timestamp: TS });
  const finished = await speech.finished();
  assert.deepEqual([finished.interrupted, finished.played_s], [false, 1.5]);
  assert.deepEqual(await client.waitForPlayout("p1"), finished);
  agent.beforeAnswer = null;
  const quiet = await client.speak("Never ends", { id: "p2" });
  await assert.rejects(
    quiet.finished(),
    (e) =>
      e instanceof PlayoutTimeoutError &&
      e.accepted === quiet.ack &&
      e.why === "unknown" && // this fake agent's get_state carries no state: nobody to ask
      e.message === "The speech did not finish within 0.2 s; whether the agent still has it could not be asked.",
  );
});

test("the agent leaving ends a wait for its answer: retried, and the agent is looked for again", async () => {
  const { room, agent, client } = setup({ agentTimeoutMs: 50, retries: 1 });
  agent.faults.push("hang");
  const pending = client.speak("Hi", { id: "gone-1" });
  await new Promise((resolve) => setTimeout(resolve, 10));
  room.leave("agent-1");
  await assert.rejects(pending, (e) => e.code === "AGENT_NOT_FOUND" && /No participant with agent code 'A1'/.test(e.message));
});

test("the agent leaving fails the playout waits on it", async () => {
  const { room, client } = setup();
  const speech = await client.speak("Bye", { id: "l1" });
  const waiting = speech.finished();
  room.leave("agent-1");
  await assert.rejects(waiting, (e) => e.code === "AGENT_NOT_FOUND" && !e.retryable && e.message === "Agent 'agent-1' left the room before the speech finished.");
});

test("finding the agent: waits for it to join; several matches are refused; senders skipped", async () => {
  const room = new FakeRoom();
  room.remoteParticipants.set("gateway", new FakeParticipant("gateway", { attributes: { "imaginex.sender": "1", "imaginex.agent_code": "A1" } }));
  const client = new ContextClient(room, { agentCode: "A1", agentTimeoutMs: 5_000 });
  const found = client.findAgent();
  setTimeout(() => room.join(new FakeAgent(room, "agent-7")), 50);
  assert.equal(await found, "agent-7");
  room.join(new FakeAgent(room, "agent-8"));
  await assert.rejects(client.findAgent({ timeoutMs: 20 }), (e) =>
    e.code === "AGENT_NOT_FOUND" && e.message === "More than one agent with agent code 'A1' is in room 'shop-42' (agent-7, agent-8); give each agent its own code, or pass agent_identity to choose one.");
  const none = new ContextClient(new FakeRoom(), { agentTimeoutMs: 10 });
  await assert.rejects(none.speak("Hi"), (e) => e.code === "AGENT_NOT_FOUND" && e.message === "No agent participant is in room 'shop-42' (waited 0.01 s).");
});

test("finding the agent: every call waiting for it goes on when it joins, not only the latest", { timeout: 10_000 }, async () => {
  // with one waiter woken per roster change, the earlier calls would sit out agentTimeoutMs
  const room = new FakeRoom();
  const client = new ContextClient(room, { agentCode: "A1", agentTimeoutMs: 30_000 });
  const waiting = [client.findAgent(), client.addContext("VIP", { id: "j1" }), client.findAgent()];
  await new Promise((resolve) => setTimeout(resolve, 20)); // all three are waiting for the roster
  const agent = new FakeAgent(room, "agent-3");
  room.join(agent);
  const [first, ack, last] = await Promise.all(waiting);
  assert.deepEqual([first, ack.id, last], ["agent-3", "j1", "agent-3"]);
  assert.deepEqual(sent(agent).map((r) => r.id), ["j1"]);
  await client.close();
});

test("over data packets: resent until the agent first answers, acks matched by id", async () => {
  const { room, agent, client } = setup({ via: "data" });
  agent.faults.push("drop"); // a newcomer's first packet can be lost: it goes again
  const ack = await client.addContext("VIP", { id: "d1" });
  assert.equal(ack.id, "d1");
  assert.equal(room.published.length, 2);
  assert.equal(room.published[0].data, room.published[1].data);
  assert.deepEqual([room.published[0].topic, room.published[0].reliable, room.published[0].destinationIdentities], ["imaginex.context", true, ["agent-1"]]);
  // an error ack without an id is matched when exactly one request waits on that agent
  agent.onData = () => queueMicrotask(() => agent.send({ type: "ack", id: null, success: false, error: "VALIDATION_ERROR", message: "Message is not valid JSON." }));
  await assert.rejects(client.addContext("x", { id: "d2" }), (e) => e.code === "VALIDATION_ERROR" && e.requestId === null);
});

test("signed: every attempt is a fresh envelope around the same body", async () => {
  const { room, agent, client } = setup({ secret: "s3cret", sender: "web-console" });
  agent.faults.push("lose");
  await client.speak("Signed.", { id: "sig-1" });
  const [first, second] = room.rpcCalls.map((c) => JSON.parse(c.payload));
  assert.equal(first.type, "signed");
  assert.equal(first.sender, "web-console");
  assert.equal(first.body, second.body);
  assert.notEqual(first.signature, second.signature);
  assert.equal(JSON.parse(first.body).id, "sig-1");
});

test("subscribe: events before the ack kept, bounded with drops counted, the end after call_ended", async () => {
  const { room, agent, client } = setup();
  agent.beforeAnswer = () => agent.send({ type: "agent_state", old_state: "idle", new_state: "listening", timestamp: TS });
  const events = await client.subscribe({ events: ["agent_state", "user_transcript"], queueSize: 2 });
  assert.deepEqual(events.events, ["agent_state", "user_transcript", "call_ended"]);
  for (const text of ["one", "two", "three"]) agent.send({ type: "user_transcript", text, final: true, timestamp: TS });
  room.deliver("stranger", { type: "user_transcript", text: "not ours", final: true, timestamp: TS });
  agent.send({ type: "call_ended", reason: "user_initiated", timestamp: TS });
  agent.send({ type: "user_transcript", text: "after the end", final: true, timestamp: TS });
  const received = [];
  for await (const event of events) received.push(event);
  // queue of 2: agent_state, one and two were pushed out by three and call_ended
  assert.deepEqual(received.map((e) => [e.type, e.text ?? e.reason, e.dropped]), [
    ["user_transcript", "three", 3],
    ["call_ended", "user_initiated", undefined],
  ]);
  assert.equal(events.dropped, 3);
  assert.equal(events.callEnded.reason, "user_initiated");
  assert.equal(sent(agent).filter((r) => r.type === "unsubscribe").length, 0); // nothing to end
});

test("subscribe: leaving the loop unsubscribes; the agent leaving throws AGENT_NOT_FOUND", async () => {
  const { room, agent, client } = setup();
  const events = await client.subscribe();
  agent.send({ type: "agent_state", old_state: "idle", new_state: "listening", timestamp: TS });
  for await (const event of events) {
    assert.equal(event.type, "agent_state");
    break;
  }
  assert.equal(sent(agent).at(-1).type, "unsubscribe");
  const [again, second] = await Promise.allSettled([client.subscribe(), client.subscribe()]);
  assert.match(String(second.reason), /already has a subscription/); // even while the first waits
  await assert.rejects(client.subscribe(), /already has a subscription/);
  const next = again.value.next();
  room.leave("agent-1");
  await assert.rejects(next, (e) => e.code === "AGENT_NOT_FOUND" && e.message === "Agent 'agent-1' left the room before the call ended.");
});

test("close: what waits fails with LIVEKIT_UNAVAILABLE, later calls too; listeners are removed", async () => {
  const { room, agent, client } = setup();
  const before = room.listenerCount("dataReceived");
  agent.faults.push("hang");
  const pending = client.speak("Hi", { id: "c1" });
  await new Promise((resolve) => setTimeout(resolve, 10));
  await client.close();
  await client.close(); // idempotent
  await assert.rejects(pending, (e) => e.code === "LIVEKIT_UNAVAILABLE" && e.requestId === "c1");
  await assert.rejects(client.speak("Again"), (e) => e.code === "LIVEKIT_UNAVAILABLE" && e.message === "The client was closed before the answer arrived.");
  assert.equal(room.listenerCount("dataReceived"), before - 1);
});

test("a disconnected room fails at once; a reconnecting one is worth another attempt", async () => {
  const { room, client } = setup({ retries: 0 });
  room.state = "disconnected";
  await assert.rejects(client.speak("Hi"), (e) => e.code === "LIVEKIT_UNAVAILABLE" && !e.retryable);
  room.state = "reconnecting";
  await assert.rejects(client.speak("Hi"), (e) => e.code === "LIVEKIT_UNAVAILABLE" && e.retryable);
});

// ------------------------------------------------------------------------------------- v1.3

const STATE = { agent_state: "speaking", user_state: "listening", current_agent: "a", context_entries: [], context_chars: 0 };

test("v1.3: a speech that did not play rejects its waits with SpeechFailedError and its reason", async () => {
  const { agent, client } = setup();
  agent.beforeAnswer = (request) =>
    agent.send({ type: "speech_failed", seq: 7, t_ms: 10, id: request.id, speech_id: `speech_${request.id}`, reason: "not_started", started: false, timestamp: TS });
  const speech = await client.speak("Late.", { id: "late", startWithinS: 0.5 });
  assert.equal(sent(agent)[0].start_within_s, 0.5);
  for (const wait of [speech.finished(), speech.started(), client.waitForPlayout("late")]) {
    await assert.rejects(wait, (e) => e instanceof SpeechFailedError && e.code === "SPEECH_FAILED" && e.reason === "not_started" && e.retryable === true);
  }
  await assert.rejects(speech.finished(), (e) => e.accepted === speech.ack && e.event.seq === 7);
});

test("v1.3: a playout wait that runs out asks the agent why (pending, lost)", async () => {
  const { agent, client } = setup({ playoutTimeoutMs: 100 });
  const speech = await client.speak("Long.", { id: "l1" });
  agent.state = { ...STATE, pending_speeches: ["speech_l1"] };
  await assert.rejects(speech.finished(), (e) => e instanceof PlayoutTimeoutError && e.why === "pending" && /still has it queued or playing/.test(e.message));
  agent.state = { ...STATE, pending_speeches: [] };
  await assert.rejects(speech.finished(), (e) => e.why === "lost" && /its end was sent but did not arrive here/.test(e.message));
});

test("v1.3: speak({ audio }) streams the clip to the agent, then names it with its sha256", async () => {
  const { room, agent, client } = setup();
  const wav = new Uint8Array([0x52, 0x49, 0x46, 0x46, 1, 2, 3, 4, 5]);
  await client.speak("Ding.", { id: "c1", audio: wav });
  const [stream] = room.streams;
  assert.equal(stream.options.topic, "imaginex.audio");
  assert.deepEqual(stream.options.destinationIdentities, ["agent-1"]);
  assert.equal(stream.options.mimeType, "audio/wav");
  assert.equal(stream.options.totalSize, wav.byteLength);
  assert.equal(stream.closed, true);
  assert.deepEqual(Buffer.concat(stream.chunks), Buffer.from(wav));
  const request = sent(agent)[0];
  assert.equal(request.audio.stream_id, stream.options.streamId);
  const { createHash } = await import("node:crypto");
  assert.equal(request.audio.sha256, createHash("sha256").update(wav).digest("hex"));
  assert.equal(request.message, "Ding.");
  await assert.rejects(client.speak(null, { audio: new Uint8Array() }), (e) => e.code === "VALIDATION_ERROR" && e.message === "The audio clip is empty.");
  await assert.rejects(client.speak(null, { audio: new Uint8Array(4 * 1024 * 1024 + 1) }), (e) => e.code === "PAYLOAD_TOO_LARGE");
  await assert.rejects(client.speak(null, { audio: wav, instructions: "x" }), /audio clip or 'instructions'/);
  assert.equal(room.streams.length, 1); // nothing streamed for a request the agent would refuse
});

test("v1.3: subscribe({ sinceSeq }) resumes: replayed events once, lastSeq, the snapshot, speech kinds", async () => {
  const { agent, client } = setup();
  const snapshot = { seq: 40, state: { ...STATE, pending_speeches: [] }, items: [], pending_speeches: [] };
  agent.subscribed = { snapshot, replayed: 2 };
  const events = await client.subscribe({ events: ["speech", "agent_transcript"], sinceSeq: 30 });
  const request = sent(agent).at(-1);
  assert.equal(request.since_seq, 30);
  assert.deepEqual(events.snapshot, snapshot);
  assert.equal(events.replayed, 2);
  const finished = { type: "speech_finished", seq: 31, t_ms: 5, id: "s", speech_id: "sp", interrupted: false, timestamp: TS, replay: true };
  agent.send(finished);
  agent.send({ type: "agent_transcript", seq: 32, t_ms: 6, speech_id: "sp", text: "Hi", interrupted: false, timestamp: TS, replay: true });
  agent.send(finished); // a repeat (a replay overlapping what came live): never handed out twice
  agent.send({ type: "agent_state", seq: 33, old_state: "idle", new_state: "listening", timestamp: TS }); // not asked for
  agent.send({ type: "context_used", seq: 34, entry_id: "e", key: null, request_id: null, llm_call: { index: 1 }, timestamp: TS }); // nor this
  agent.send({ type: "call_ended", seq: 35, reason: "done", timestamp: TS });
  const got = [];
  for await (const event of events) got.push([event.type, event.seq]);
  assert.deepEqual(got, [["speech_finished", 31], ["agent_transcript", 32], ["call_ended", 35]]);
  assert.equal(events.lastSeq, 35);
  await assert.rejects(client.subscribe({ sinceSeq: -1 }), /sinceSeq/);
});

test("v1.3: every speech_failed reason says what happened; only not_started is worth a retry", async () => {
  // the sentences the Python client says too (fixtures/protocol.json)
  const { sentences: reasons, retryable_reasons: retryable } = FIXTURES.speech_failed;
  assert.deepEqual(retryable, ["not_started"]);
  assert.equal(Object.keys(reasons).length, 6);
  const { agent, client } = setup();
  for (const [reason, sentence] of Object.entries(reasons)) {
    const id = `f-${reason}`;
    const speech = await client.speak("Hi.", { id });
    // the end arrives before anyone waits: a later wait still learns it
    agent.send({ type: "speech_failed", seq: 1, t_ms: 1, id, speech_id: `speech_${id}`, reason, started: false, timestamp: TS });
    await assert.rejects(speech.finished(), (e) =>
      e instanceof SpeechFailedError && e instanceof ContextError && e.code === "SPEECH_FAILED" &&
      e.reason === reason && e.message === sentence && e.retryable === retryable.includes(reason) &&
      e.requestId === id && e.event.reason === reason && e.accepted === speech.ack);
    await assert.rejects(client.waitForPlayout(id), (e) => e instanceof SpeechFailedError && e.reason === reason);
  }
});

test("v1.3: a wait that runs out while the agent's pending list was cut says it cannot tell", async () => {
  const { agent, client } = setup({ playoutTimeoutMs: 100 });
  const speech = await client.speak("Long.", { id: "t1" });
  agent.state = { ...STATE, pending_speeches: [], pending_speeches_truncated: true };
  await assert.rejects(speech.finished(), (e) => e instanceof PlayoutTimeoutError && e.why === "unknown");
});

test("v1.3: sendClip streams any clip form, names its type from its first bytes, in 64 KiB writes", async () => {
  const { room, client } = setup();
  const { createHash } = await import("node:crypto");
  const cases = [
    [new Uint8Array([0x49, 0x44, 0x33, 9]), undefined, "audio/mpeg"],
    [new Uint8Array([0x4f, 0x67, 0x67, 0x53, 9]).buffer, undefined, "audio/ogg"],
    [new Uint8Array([0x66, 0x4c, 0x61, 0x43, 9]), undefined, "audio/flac"],
    [new Blob([new Uint8Array([1, 2, 3])], { type: "audio/aac" }), undefined, "audio/aac"],
    [new Uint8Array([1, 2, 3]), undefined, "application/octet-stream"],
    [new Uint8Array([0x52, 0x49, 0x46, 0x46]), "audio/x-custom", "audio/x-custom"],
  ];
  for (const [audio, mimeType, expected] of cases) {
    const clip = await client.sendClip(audio, { mimeType });
    const stream = room.streams.at(-1);
    assert.equal(stream.options.mimeType, expected);
    assert.equal(clip.stream_id, stream.options.streamId);
    assert.match(clip.stream_id, /^imaginex-clip-[0-9a-f]{32}$/);
    const bytes = Buffer.concat(stream.chunks);
    assert.equal(clip.sha256, createHash("sha256").update(bytes).digest("hex"));
  }
  const big = new Uint8Array(150 * 1024).map((_, i) => i % 251);
  const clip = await client.sendClip(big);
  const stream = room.streams.at(-1);
  assert.deepEqual(stream.chunks.map((c) => c.byteLength), [65536, 65536, 22528]);
  assert.deepEqual(Buffer.concat(stream.chunks), Buffer.from(big));
  assert.equal(clip.sha256, createHash("sha256").update(big).digest("hex"));
  assert.equal(new Set(room.streams.map((s) => s.options.streamId)).size, room.streams.length); // a fresh id each
});

test("v1.3: a clip that cannot be streamed is LIVEKIT_UNAVAILABLE, and no speak goes out", async () => {
  const { room, agent, client } = setup();
  room.localParticipant.streamBytes = async () => { throw new Error("data channel closed"); };
  await assert.rejects(client.sendClip(new Uint8Array([1])), (e) => e instanceof ContextError && e.code === "LIVEKIT_UNAVAILABLE" && e.retryable === true && e.cause.message === "data channel closed");
  await assert.rejects(client.speak("Ding.", { id: "nc", audio: new Uint8Array([1]) }), (e) => e.code === "LIVEKIT_UNAVAILABLE");
  assert.equal(sent(agent).length, 0);
});

test("v1.3: events_lost and the fresh snapshot always come through, events_lost even at a seq seen", async () => {
  const { agent, client } = setup();
  const snapshot = { seq: 50, state: { ...STATE, pending_speeches: [] }, items: [], pending_speeches: [] };
  agent.subscribed = { replayed: 2 };
  const events = await client.subscribe({ events: ["agent_transcript"], sinceSeq: 3 });
  assert.equal(events.snapshot, null);
  assert.equal(events.lastSeq, 3); // nothing handed out yet: where it asked to resume
  agent.send({ type: "events_lost", seq: 3, t_ms: 1, from_seq: 4, to_seq: 40, timestamp: TS, replay: true });
  agent.send({ type: "snapshot", seq: 50, t_ms: 1, timestamp: TS, replay: true, ...snapshot });
  agent.send({ type: "agent_transcript", seq: 50, t_ms: 2, speech_id: "sp", text: "old", interrupted: false, timestamp: TS }); // at or before the snapshot: a repeat
  agent.send({ type: "agent_transcript", seq: 51, t_ms: 2, speech_id: "sp", text: "new", interrupted: false, timestamp: TS });
  agent.send({ type: "call_ended", seq: 52, reason: "done", timestamp: TS });
  const got = [];
  for await (const event of events) got.push([event.type, event.seq]);
  assert.deepEqual(got, [["events_lost", 3], ["snapshot", 50], ["agent_transcript", 51], ["call_ended", 52]]);
  assert.equal(events.lastSeq, 52);
});

test("v1.3: without sinceSeq, lastSeq starts at the snapshot's seq", async () => {
  const { agent, client } = setup();
  const snapshot = { seq: 12, state: { ...STATE, pending_speeches: [] }, items: [], pending_speeches: [] };
  agent.subscribed = { snapshot };
  const events = await client.subscribe({ events: ["context"] });
  assert.equal(sent(agent).at(-1).since_seq, undefined);
  assert.equal(events.replayed, 0);
  assert.equal(events.lastSeq, 12);
  agent.send({ type: "context_dropped", seq: 13, t_ms: 3, entry_id: "e", key: "k", request_id: "c1", reason: "replaced", timestamp: TS });
  agent.send({ type: "context_used", seq: 14, t_ms: 4, entry_id: "e2", key: null, request_id: "c2", llm_call: { index: 1 }, timestamp: TS });
  agent.send({ type: "call_ended", seq: 15, reason: "done", timestamp: TS });
  const got = [];
  for await (const event of events) got.push(event.type);
  assert.deepEqual(got, ["context_dropped", "context_used", "call_ended"]);
});
