/**
 * The wire protocol: names, limits and the message types, generated from the JSON Schemas the
 * Python side publishes (src/generated/wire.ts), plus the few functions that read what arrives.
 */
import type {
  Ack,
  ErrorAck,
  ServerMessage,
  SessionEvent,
  SpeechEvent,
  SuccessAck,
} from "./generated/wire.js";

export type * from "./generated/wire.js";

/** Data-packet topic the agent listens on. */
export const CONTEXT_TOPIC = "imaginex.context";
/** Data-packet topic acks and events come back on, to the sender only. */
export const ACK_TOPIC = "imaginex.context.ack";
/** RPC method taking the same request JSON; the response is the ack JSON. */
export const RPC_METHOD = "imaginex.context";
/** Participant attribute the agent publishes its code in. */
export const AGENT_CODE_ATTRIBUTE = "imaginex.agent_code";
/** Participant attribute senders join with; a participant carrying it is never the agent. */
export const SENDER_ATTRIBUTE = "imaginex.sender";
/** LiveKit's attribute of an avatar, naming the agent it speaks for: it is never the agent. */
export const PUBLISH_ON_BEHALF_ATTRIBUTE = "lk.publish_on_behalf";
/** LiveKit's reliable packet limit: a request (signed or not) must fit it, in UTF-8 bytes. */
export const MAX_PAYLOAD_BYTES = 15 * 1024;
export const MAX_ID_LENGTH = 128;

export const MESSAGE_TYPES = [
  "speak",
  "add_context",
  "remove_context",
  "get_state",
  "end_call",
  "interrupt",
  "cancel",
  "update_io",
  "update_instructions",
  "reset_instructions",
  "user_message",
  "get_history",
  "subscribe",
  "unsubscribe",
] as const;
export type MessageType = (typeof MESSAGE_TYPES)[number];

export const SESSION_EVENT_TYPES = [
  "user_transcript",
  "agent_transcript",
  "agent_state",
  "user_state",
  "conversation_item",
  "tool_call",
  "call_ended",
  "speech",
  "context",
] as const;
/** What a subscription names: an event's type, or (v1.3) a kind: `speech`, `context`. */
export type SessionEventType = (typeof SESSION_EVENT_TYPES)[number];

/** The `type` of every event a subscription hands out besides the speech events. */
const SESSION_EVENTS: ReadonlySet<string> = new Set([
  "user_transcript",
  "agent_transcript",
  "agent_state",
  "user_state",
  "conversation_item",
  "tool_call",
  "call_ended",
  "context_used",
  "context_dropped",
  "events_lost",
  "snapshot",
]);

export function isAck(message: ServerMessage): message is Ack {
  return message.type === "ack";
}

export function isSuccessAck(message: ServerMessage): message is SuccessAck {
  return message.type === "ack" && message.success === true;
}

export function isErrorAck(message: ServerMessage): message is ErrorAck {
  return message.type === "ack" && message.success === false;
}

const SPEECH_EVENTS: ReadonlySet<string> = new Set(["speech_started", "speech_finished", "speech_failed"]);

/** The protocol version this client speaks: sent in every request as `protocol`. */
export const PROTOCOL_VERSION = "1.3";
/** v1.3: the default of a speak's `start_within_s` at the agent, in seconds. */
export const DEFAULT_START_WITHIN_S = 30;
/** v1.3: the largest clip an agent takes for `speak{audio}`, in bytes, and the longest. */
export const MAX_CLIP_BYTES = 4 * 1024 * 1024;
export const MAX_CLIP_S = 30;
/** v1.3: the byte stream topic a clip travels on. */
export const AUDIO_STREAM_TOPIC = "imaginex.audio";

const EVENT_KINDS: Readonly<Record<string, string>> = {
  speech_started: "speech",
  speech_finished: "speech",
  speech_failed: "speech",
  context_used: "context",
  context_dropped: "context",
};

/** The name a subscription uses for events of `type` (`speech`, `context`, or the type itself). */
export function eventKind(type: string): string {
  return EVENT_KINDS[type] ?? type;
}

/** `speech_started`, `speech_finished` or (v1.3) `speech_failed`. */
export function isSpeechEvent(message: ServerMessage): message is SpeechEvent {
  return SPEECH_EVENTS.has(message.type);
}

export function isSessionEvent(message: ServerMessage): message is SessionEvent {
  return SESSION_EVENTS.has(message.type);
}

/**
 * Reads what arrived on the ack topic (or as an RPC response): an ack or an event, or `null`
 * when it is not one of the protocol's messages. Unknown fields are kept; nothing is thrown.
 */
export function parseServerMessage(raw: string | Uint8Array): ServerMessage | null {
  let value: unknown;
  try {
    value = JSON.parse(typeof raw === "string" ? raw : new TextDecoder().decode(raw));
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return null;
  const message = value as { type?: unknown; success?: unknown; id?: unknown };
  if (message.type === "ack") {
    return typeof message.success === "boolean" && (message.id === null || typeof message.id === "string")
      ? (value as Ack)
      : null;
  }
  if (typeof message.type === "string" && SPEECH_EVENTS.has(message.type)) {
    return value as SpeechEvent;
  }
  return typeof message.type === "string" && SESSION_EVENTS.has(message.type)
    ? (value as SessionEvent)
    : null;
}

/** UTF-8 length of a text, as the packet limit counts it. */
export function utf8Length(text: string): number {
  return new TextEncoder().encode(text).length;
}
