// An in-memory stand-in for a livekit-client Room and the agent on the other side, for the
// room client's unit tests: the events and calls ContextClient uses (RoomEvent names,
// remoteParticipants, performRpc, publishData), and an agent answering like ContextPlugin with
// scripted faults. The real Room and the real agent are proven in test/browser/live.test.mjs.
import { EventEmitter } from "node:events";

export const ACK_TOPIC = "imaginex.context.ack";
const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class FakeParticipant {
  constructor(identity, { kind = 4, attributes = {} } = {}) {
    this.identity = identity;
    this.kind = kind;
    this.attributes = attributes;
  }
}

export class FakeRoom extends EventEmitter {
  constructor(name = "shop-42") {
    super();
    this.name = name;
    this.state = "connected";
    this.remoteParticipants = new Map();
    this.rpcCalls = [];
    this.published = [];
    this.streams = [];
    this.agents = new Map();
    this.localParticipant = {
      identity: "web-user",
      performRpc: (params) => {
        this.rpcCalls.push(params);
        const agent = this.agents.get(params.destinationIdentity);
        if (!agent) return Promise.reject(Object.assign(new Error("not found"), { code: 1401 }));
        return agent.onRpc(params.payload);
      },
      publishData: async (data, options) => {
        this.published.push({ data: decoder.decode(data), ...options });
        for (const identity of options.destinationIdentities) this.agents.get(identity)?.onData(decoder.decode(data));
      },
      // a byte stream (v1.3 clips): what was written, by stream id, once closed
      streamBytes: async (options) => {
        const stream = { options, chunks: [], closed: false };
        this.streams.push(stream);
        return {
          write: async (chunk) => void stream.chunks.push(Uint8Array.from(chunk)),
          close: async () => void (stream.closed = true),
        };
      },
    };
  }

  join(agent) {
    this.agents.set(agent.identity, agent);
    this.remoteParticipants.set(agent.identity, agent.participant);
    this.emit("participantConnected", agent.participant);
  }

  leave(identity) {
    const participant = this.remoteParticipants.get(identity);
    this.agents.delete(identity);
    this.remoteParticipants.delete(identity);
    this.emit("participantDisconnected", participant);
  }

  /** A packet on the ack topic from `identity`. */
  deliver(identity, message) {
    const participant = this.remoteParticipants.get(identity) ?? new FakeParticipant(identity);
    const bytes = encoder.encode(typeof message === "string" ? message : JSON.stringify(message));
    this.emit("dataReceived", bytes, participant, undefined, ACK_TOPIC);
  }
}

/**
 * Answers like ContextPlugin: one ack per request, the first ack again (duplicate) for a repeated
 * id. `faults` is consumed one per incoming request: "lose" (applied, answer lost as
 * RESPONSE_TIMEOUT), "hang" (never answers), "drop" (never sees it), an object with `code`
 * (an RPC error), or an object with `error` (an error ack).
 */
export class FakeAgent {
  constructor(room, identity = "agent-1", { code = "A1", attributes } = {}) {
    this.room = room;
    this.identity = identity;
    this.participant = new FakeParticipant(identity, { attributes: attributes ?? { "imaginex.agent_code": code } });
    this.code = code;
    this.requests = [];
    this.applied = new Map();
    this.faults = [];
    this.beforeAnswer = null;
    /** More for the subscribe ack's data (v1.3: a `snapshot`, `replayed`). */
    this.subscribed = {};
  }

  ack(request, extra = {}) {
    const data = { agent_code: this.code, context_type: request.type, delivered_to_rooms: 1, room_id: this.room.name, timestamp: "2026-01-15T10:30:00.000Z" };
    if (request.type === "speak") Object.assign(data, { speech_id: `speech_${request.id}`, method: "say" });
    if (request.type === "subscribe") Object.assign(data, { events: [...request.events, "call_ended"] }, this.subscribed);
    if (request.type === "get_state" && this.state) data.state = this.state;
    return { type: "ack", id: request.id ?? null, success: true, message: "ok", data, ...extra };
  }

  answer(raw) {
    let request = JSON.parse(raw);
    if (request.type === "signed") request = JSON.parse(request.body);
    this.requests.push({ raw, request });
    const fault = this.faults.shift();
    if (fault === "drop") return { fault };
    if (fault?.error) return { fault, response: { type: "ack", id: request.id, success: false, error: fault.error, message: fault.message ?? "refused", ...(fault.retry_after ? { retry_after: fault.retry_after } : {}) } };
    let response = this.applied.get(request.id);
    if (response) response = { ...response, duplicate: true };
    else {
      response = this.ack(request);
      this.applied.set(request.id, response);
    }
    return { fault, request, response };
  }

  async onRpc(payload) {
    const { fault, request, response } = this.answer(payload);
    if (fault === "hang" || fault === "drop") return new Promise(() => {});
    if (fault?.code) throw Object.assign(new Error("rpc failed"), { code: fault.code });
    await this.beforeAnswer?.(request);
    if (fault === "lose") throw Object.assign(new Error("response lost"), { code: 1502 });
    return JSON.stringify(response);
  }

  onData(payload) {
    const { fault, request, response } = this.answer(payload);
    if (fault === "hang" || fault === "drop" || fault === "lose") return;
    queueMicrotask(async () => {
      await this.beforeAnswer?.(request);
      this.room.deliver(this.identity, response);
    });
  }

  send(message) {
    this.room.deliver(this.identity, message);
  }
}
