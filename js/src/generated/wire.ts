/* eslint-disable */
// Generated from schema/wire.schema.json (the Python side's protocol.wire_json_schema())
// by scripts/generate-types.mjs. Do not edit: run `npm run generate`.

/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "Ack".
 */
export type Ack = SuccessAck | ErrorAck;
/**
 * Stable error codes carried by error acks (and the gateway's error bodies).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ErrorCode".
 */
export type ErrorCode =
  | "VALIDATION_ERROR"
  | "UNAUTHORIZED"
  | "AGENT_NOT_FOUND"
  | "NO_ACTIVE_ROOMS"
  | "PAYLOAD_TOO_LARGE"
  | "RATE_LIMITED"
  | "NOT_READY"
  | "BUSY"
  | "INTERNAL_ERROR"
  | "LIVEKIT_UNAVAILABLE"
  | "TIMEOUT"
  | "ID_REUSED"
  | "NOT_FOUND"
  | "SPEECH_FAILED";
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "Packet".
 */
export type Packet =
  | SpeakRequest
  | AddContextRequest
  | RemoveContextRequest
  | GetStateRequest
  | EndCallRequest
  | InterruptRequest
  | CancelRequest
  | UpdateIORequest
  | UpdateInstructionsRequest
  | ResetInstructionsRequest
  | UserMessageRequest
  | GetHistoryRequest
  | SubscribeRequest
  | UnsubscribeRequest
  | SignedEnvelope;
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "Request".
 */
export type Request =
  | SpeakRequest
  | AddContextRequest
  | RemoveContextRequest
  | GetStateRequest
  | EndCallRequest
  | InterruptRequest
  | CancelRequest
  | UpdateIORequest
  | UpdateInstructionsRequest
  | ResetInstructionsRequest
  | UserMessageRequest
  | GetHistoryRequest
  | SubscribeRequest
  | UnsubscribeRequest;
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ServerMessage".
 */
export type ServerMessage =
  | SuccessAck
  | ErrorAck
  | SpeechStartedEvent
  | SpeechFinishedEvent
  | SpeechFailedEvent
  | UserTranscriptEvent
  | AgentTranscriptEvent
  | AgentStateEvent
  | UserStateEvent
  | ConversationItemEvent
  | ToolCallEvent
  | CallEndedEvent
  | ContextUsedEvent
  | ContextDroppedEvent
  | EventsLostEvent
  | SnapshotEvent;
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SessionEvent".
 */
export type SessionEvent =
  | UserTranscriptEvent
  | AgentTranscriptEvent
  | AgentStateEvent
  | UserStateEvent
  | ConversationItemEvent
  | ToolCallEvent
  | CallEndedEvent
  | ContextUsedEvent
  | ContextDroppedEvent
  | EventsLostEvent
  | SnapshotEvent;
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeechEvent".
 */
export type SpeechEvent = SpeechStartedEvent | SpeechFinishedEvent | SpeechFailedEvent;
/**
 * ``POST /v1/agent/{agent_code}/update-io``: mute or unmute the agent, the user, the
 * transcription.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UpdateIOBody".
 */
export type UpdateIOBody = UpdateIOBody1 & UpdateIOBody2;
export type UpdateIOBody1 =
  | {
      agent_audio: boolean;
    }
  | {
      user_audio: boolean;
    }
  | {
      transcription: boolean;
    };

export interface ImaginexWire {
  Ack?: Ack;
  AddContextBody?: AddContextBody;
  AddContextResponse?: AddContextResponse;
  CancelBody?: CancelBody;
  ControlResponse?: ControlResponse;
  EndCallBody?: EndCallBody;
  ErrorResponse?: ErrorResponse;
  GetHistoryBody?: GetHistoryBody;
  GetStateBody?: GetStateBody;
  HealthResponse?: HealthResponse;
  InterruptBody?: InterruptBody;
  Packet?: Packet;
  RemoveContextBody?: RemoveContextBody;
  Request?: Request;
  ResetInstructionsBody?: ResetInstructionsBody;
  ServerMessage?: ServerMessage;
  SessionEvent?: SessionEvent;
  SpeakBody?: SpeakBody;
  SpeakResponse?: SpeakResponse;
  SpeechEvent?: SpeechEvent;
  UpdateIOBody?: UpdateIOBody;
  UpdateInstructionsBody?: UpdateInstructionsBody;
  UserMessageBody?: UserMessageBody;
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SuccessAck".
 */
export interface SuccessAck {
  data: AckData;
  duplicate?: boolean;
  id: string | null;
  message: string;
  success: true;
  type: "ack";
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AckData".
 */
export interface AckData {
  agent_code: string | null;
  cancelled?: "queued" | "playing";
  context_type:
    | "speak"
    | "add_context"
    | "remove_context"
    | "get_state"
    | "end_call"
    | "interrupt"
    | "cancel"
    | "update_io"
    | "update_instructions"
    | "reset_instructions"
    | "user_message"
    | "get_history"
    | "subscribe"
    | "unsubscribe";
  delivered_to_rooms: number;
  events?: (
    | "user_transcript"
    | "agent_transcript"
    | "agent_state"
    | "user_state"
    | "conversation_item"
    | "tool_call"
    | "call_ended"
    | "speech"
    | "context"
  )[];
  evicted?: number;
  fallback?: "generate_reply";
  history?: HistoryItem[];
  instructions_mode?: "append" | "replace";
  interrupted?: boolean;
  io?: IOState;
  key?: string;
  method?: "say" | "generate_reply";
  removed?: boolean;
  replayed?: number;
  room_id: string;
  snapshot?: Snapshot;
  speech_id?: string;
  state?: AgentStateInfo;
  target_id?: string;
  timestamp: string;
  truncated?: true;
}
/**
 * One message of the conversation, as ``get_history`` reports it.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "HistoryItem".
 */
export interface HistoryItem {
  created_at: string;
  id: string;
  interrupted: boolean;
  role: "system" | "developer" | "user" | "assistant";
  text: string;
}
/**
 * Which of the session's inputs and outputs are on (``update_io``, ``get_state``).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "IOState".
 */
export interface IOState {
  agent_audio: boolean;
  transcription: boolean;
  user_audio: boolean;
}
/**
 * v1.3: where the call stands: in the ``subscribe`` ack, and as a ``snapshot`` event after
 * ``events_lost``. ``seq``: the live stream continues after it.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "Snapshot".
 */
export interface Snapshot {
  items: HistoryItem[];
  items_truncated?: true;
  pending_speeches: PendingSpeech[];
  seq: number;
  state: AgentStateInfo;
}
/**
 * v1.3: a speech the plugin started that is still queued or playing (snapshots).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "PendingSpeech".
 */
export interface PendingSpeech {
  playing: boolean;
  request_id: string | null;
  speech_id: string;
}
/**
 * What ``get_state`` reports.
 *
 * An answer must fit one packet (``MAX_PAYLOAD_BYTES``), so a long list is cut to its first
 * items; then ``*_truncated`` is true and ``*_total`` says how many there are in all.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AgentStateInfo".
 */
export interface AgentStateInfo {
  agent_state: string;
  context_chars: number;
  context_entries: ContextEntryInfo[];
  context_entries_total?: number;
  context_entries_truncated?: true;
  current_agent: string | null;
  io?: IOState;
  pending_speeches: string[];
  pending_speeches_total?: number;
  pending_speeches_truncated?: true;
  user_state: string;
}
/**
 * One context entry the plugin holds, as reported by ``get_state``.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ContextEntryInfo".
 */
export interface ContextEntryInfo {
  chars: number;
  entry_id: string;
  expires_in_s: number | null;
  key: string | null;
  request_id: string | null;
  role: "system" | "developer" | "user" | "assistant";
  scope: "persistent" | "next_turn";
  used?: LlmCall;
}
/**
 * v1.3: the model request that carried a context entry (``context_used``).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "LlmCall".
 */
export interface LlmCall {
  index: number;
  realtime?: true;
  speech_id?: string;
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ErrorAck".
 */
export interface ErrorAck {
  error: ErrorCode;
  id: string | null;
  message: string;
  retry_after?: number;
  success: false;
  type: "ack";
}
/**
 * ``POST /v1/agent/{agent_code}/add-context``: give background knowledge, or speak it.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AddContextBody".
 */
export interface AddContextBody {
  /**
   * The knowledge to add, or with type speak the text.
   */
  context: string;
  /**
   * add_context: a later add with the same key replaces this entry in place, and remove-context removes it. Ignored with type speak.
   */
  key?: string | null;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
  /**
   * add_context (default): nothing is spoken. speak: the context is spoken.
   */
  type?: "speak" | "add_context";
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AddContextResponse".
 */
export interface AddContextResponse {
  data: AddContextData;
  message: string;
  success: true;
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AddContextData".
 */
export interface AddContextData {
  agent_code: string;
  context_type: "speak" | "add_context";
  /**
   * Rooms whose agent acknowledged the message.
   */
  delivered_to_rooms: number;
  /**
   * The message id: the Idempotency-Key header, or one the gateway made up.
   */
  request_id: string;
  rooms: RoomResult[];
  /**
   * ISO 8601 UTC.
   */
  timestamp: string;
}
/**
 * What happened in one room the message was sent to.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "RoomResult".
 */
export interface RoomResult {
  /**
   * The agent in this room acknowledged the message.
   */
  delivered: boolean;
  /**
   * The agent had already applied a message with this Idempotency-Key.
   */
  duplicate: boolean;
  /**
   * The error code when not delivered.
   */
  error: string | null;
  /**
   * A sentence saying why, if not.
   */
  message: string | null;
  /**
   * Call-control endpoints: what the agent reported beyond success (io, history, speech_id, ...). Absent otherwise.
   */
  result?: {
    [k: string]: unknown | undefined;
  };
  room: string;
}
/**
 * ``POST /v1/agent/{agent_code}/cancel``: drop one speech the gateway sent, by its id.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "CancelBody".
 */
export interface CancelBody {
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
  /**
   * The request_id of the speak (or user-message) call whose speech to drop.
   */
  target_id: string;
}
/**
 * The answer of every call-control endpoint.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ControlResponse".
 */
export interface ControlResponse {
  data: ControlData;
  message: string;
  success: true;
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ControlData".
 */
export interface ControlData {
  agent_code: string;
  /**
   * The message type sent, e.g. end_call.
   */
  context_type: string;
  /**
   * Rooms whose agent acknowledged the message.
   */
  delivered_to_rooms: number;
  /**
   * The message id: the Idempotency-Key header, or one the gateway made up.
   */
  request_id: string;
  rooms: RoomResult[];
  /**
   * ISO 8601 UTC.
   */
  timestamp: string;
}
/**
 * ``POST /v1/agent/{agent_code}/end-call``: end the conversation.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "EndCallBody".
 */
export interface EndCallBody {
  /**
   * true: what is playing and queued finishes first; false: cut at once.
   */
  after_speech?: boolean;
  /**
   * Why; it travels in the call_ended event and the agent's log.
   */
  reason?: string | null;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * Every error. ``data`` is present only when the message was sent and no agent took it.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ErrorResponse".
 */
export interface ErrorResponse {
  data?: SpeakData | AddContextData | ControlData;
  error: string;
  message: string;
  success: false;
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeakData".
 */
export interface SpeakData {
  agent_code: string;
  /**
   * Rooms whose agent acknowledged the message.
   */
  delivered_to_rooms: number;
  /**
   * The message id: the Idempotency-Key header, or one the gateway made up.
   */
  request_id: string;
  rooms: RoomResult[];
  /**
   * ISO 8601 UTC.
   */
  timestamp: string;
}
/**
 * ``POST /v1/agent/{agent_code}/get-history``: the newest conversation items.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "GetHistoryBody".
 */
export interface GetHistoryBody {
  /**
   * How many of the newest items, at most (fewer if they cannot fit a packet).
   */
  limit?: number;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * ``POST /v1/agent/{agent_code}/get-state``: the agent's and the user's state, the
 * context entries the agent holds, the pending speeches and the I/O switches.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "GetStateBody".
 */
export interface GetStateBody {
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "HealthResponse".
 */
export interface HealthResponse {
  status: "ok";
  version: string;
}
/**
 * ``POST /v1/agent/{agent_code}/interrupt``: stop what the agent is saying now.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "InterruptBody".
 */
export interface InterruptBody {
  /**
   * Also stop speech that does not allow interruptions (else 409 BUSY).
   */
  force?: boolean;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * Make the agent say something now, through its TTS (or phrase it, with ``instructions``,
 * or play a clip, with ``audio``).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeakRequest".
 */
export interface SpeakRequest {
  add_to_history?: boolean;
  agent_code?: string | null;
  allow_interruptions?: boolean;
  audio?: AudioClipRef | null;
  context?: string | null;
  end_call_after?: boolean;
  id?: string | null;
  instructions?: string | null;
  interrupt?: boolean;
  message?: string | null;
  mode?: ("queue" | "interrupt" | "if_idle") | null;
  protocol?: string | null;
  room_id?: string | null;
  start_within_s?: number | null;
  type: "speak";
}
/**
 * v1.3: the audio clip a ``speak`` plays: a LiveKit byte stream the same participant sent
 * on ``AUDIO_STREAM_TOPIC`` before the request (at most ``MAX_CLIP_BYTES``, ``MAX_CLIP_S``).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AudioClipRef".
 */
export interface AudioClipRef {
  sha256?: string | null;
  stream_id: string;
}
/**
 * Give the agent background knowledge for its next replies; nothing is spoken.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AddContextRequest".
 */
export interface AddContextRequest {
  agent_code?: string | null;
  context?: string | null;
  id?: string | null;
  key?: string | null;
  message?: string | null;
  protocol?: string | null;
  role?: "system" | "developer" | "user" | "assistant";
  room_id?: string | null;
  scope?: "persistent" | "next_turn";
  trigger_reply?: boolean;
  ttl_s?: number | null;
  type: "add_context";
}
/**
 * Remove the context entry added under ``key`` (succeeds with ``removed: false`` if none).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "RemoveContextRequest".
 */
export interface RemoveContextRequest {
  agent_code?: string | null;
  id?: string | null;
  key: string;
  protocol?: string | null;
  room_id?: string | null;
  type: "remove_context";
}
/**
 * Ask for the agent's and the user's state and the plugin's context entries.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "GetStateRequest".
 */
export interface GetStateRequest {
  agent_code?: string | null;
  id?: string | null;
  protocol?: string | null;
  room_id?: string | null;
  type: "get_state";
}
/**
 * End the conversation: the session shuts down and, inside a job, the room is deleted.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "EndCallRequest".
 */
export interface EndCallRequest {
  after_speech?: boolean;
  agent_code?: string | null;
  id?: string | null;
  protocol?: string | null;
  reason?: string | null;
  room_id?: string | null;
  type: "end_call";
}
/**
 * Stop what the agent is saying now, and what is queued (``session.interrupt``).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "InterruptRequest".
 */
export interface InterruptRequest {
  agent_code?: string | null;
  force?: boolean;
  id?: string | null;
  protocol?: string | null;
  room_id?: string | null;
  type: "interrupt";
}
/**
 * Drop one of our speeches by the id of the request that started it.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "CancelRequest".
 */
export interface CancelRequest {
  agent_code?: string | null;
  id?: string | null;
  protocol?: string | null;
  room_id?: string | null;
  target_id: string;
  type: "cancel";
}
/**
 * Mute or unmute the agent's voice, listening to the user and transcription output.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UpdateIORequest".
 */
export interface UpdateIORequest {
  agent_audio?: boolean | null;
  agent_code?: string | null;
  id?: string | null;
  protocol?: string | null;
  room_id?: string | null;
  transcription?: boolean | null;
  type: "update_io";
  user_audio?: boolean | null;
}
/**
 * Steer the current agent: add to its instructions or replace them.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UpdateInstructionsRequest".
 */
export interface UpdateInstructionsRequest {
  agent_code?: string | null;
  id?: string | null;
  instructions: string;
  mode?: "append" | "replace";
  protocol?: string | null;
  room_id?: string | null;
  type: "update_instructions";
}
/**
 * Give the current agent its own instructions back.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ResetInstructionsRequest".
 */
export interface ResetInstructionsRequest {
  agent_code?: string | null;
  id?: string | null;
  protocol?: string | null;
  room_id?: string | null;
  type: "reset_instructions";
}
/**
 * Text as the user's own turn: in the history as a user message, answered by the agent.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UserMessageRequest".
 */
export interface UserMessageRequest {
  agent_code?: string | null;
  id?: string | null;
  interrupt?: boolean;
  protocol?: string | null;
  respond?: boolean;
  room_id?: string | null;
  text: string;
  type: "user_message";
}
/**
 * Ask for the newest conversation items.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "GetHistoryRequest".
 */
export interface GetHistoryRequest {
  agent_code?: string | null;
  id?: string | null;
  limit?: number;
  protocol?: string | null;
  room_id?: string | null;
  type: "get_history";
}
/**
 * Receive the session's live events on the ack topic until unsubscribed or gone.
 *
 * A second subscribe from the same sender replaces the first one's options. ``call_ended``
 * comes to every subscriber, listed or not, as its last event.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SubscribeRequest".
 */
export interface SubscribeRequest {
  agent_code?: string | null;
  /**
   * @minItems 1
   * @maxItems 18
   */
  events: [
    (
      | "user_transcript"
      | "agent_transcript"
      | "agent_state"
      | "user_state"
      | "conversation_item"
      | "tool_call"
      | "call_ended"
      | "speech"
      | "context"
    ),
    ...(
      | "user_transcript"
      | "agent_transcript"
      | "agent_state"
      | "user_state"
      | "conversation_item"
      | "tool_call"
      | "call_ended"
      | "speech"
      | "context"
    )[]
  ];
  id?: string | null;
  interim?: boolean;
  protocol?: string | null;
  room_id?: string | null;
  since_seq?: number | null;
  tool_arguments?: boolean;
  type: "subscribe";
}
/**
 * End the sender's own subscription (succeeds with ``removed: false`` if there was none).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UnsubscribeRequest".
 */
export interface UnsubscribeRequest {
  agent_code?: string | null;
  id?: string | null;
  protocol?: string | null;
  room_id?: string | null;
  type: "unsubscribe";
}
/**
 * A request signed with the shared secret; see ``security.sign_request`` for the scheme.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SignedEnvelope".
 */
export interface SignedEnvelope {
  body: string;
  sender?: string | null;
  signature: string;
  timestamp: number;
  type: "signed";
}
/**
 * ``POST /v1/agent/{agent_code}/remove-context``: remove the context entry added under a
 * key (succeeds with ``removed: false`` when there is none).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "RemoveContextBody".
 */
export interface RemoveContextBody {
  /**
   * The key the entry was added under (add-context's key).
   */
  key: string;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * ``POST /v1/agent/{agent_code}/reset-instructions``: the agent's own instructions back.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ResetInstructionsBody".
 */
export interface ResetInstructionsBody {
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * Sent when the speech's playout really begins (not when it is queued).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeechStartedEvent".
 */
export interface SpeechStartedEvent {
  dropped?: number;
  id: string | null;
  replay?: true;
  seq?: number;
  speech_id: string;
  t_ms?: number;
  timestamp: string;
  type: "speech_started";
}
/**
 * Sent when playout has ended or was cut; never at scheduling time.
 *
 * To a v1.3 sender (``protocol``) it means the speech played (in full, or cut by the user or
 * an ``interrupt``); every other end is a :class:`SpeechFailedEvent`. An older sender gets
 * this event for every end, with ``failed`` / ``reason`` / ``cancelled`` saying which.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeechFinishedEvent".
 */
export interface SpeechFinishedEvent {
  call_kept?: true;
  cancelled?: true;
  dropped?: number;
  failed?: true;
  id: string | null;
  interrupted: boolean;
  played_s?: number;
  reason?: "shutdown" | "avatar_left";
  replay?: true;
  seq?: number;
  speech_id: string;
  t_ms?: number;
  timestamp: string;
  type: "speech_finished";
}
/**
 * v1.3: the speech ended without playing as asked; the other terminal event.
 *
 * ``reason``: ``not_started`` (not playing within ``start_within_s``: cancelled, it never
 * plays late), ``tts_error`` (the TTS failed), ``llm_error`` (the model failed to phrase a
 * reply), ``session_closed`` (the session or the agent stopped first), ``cancelled`` (a
 * ``cancel``, an ``end_call``, or an ``interrupt`` that emptied the queue before it began),
 * ``avatar_left`` (the avatar playing the agent's audio left the room before the speech ended,
 * or was gone when it would have started: nobody heard the rest, no ``played_s``).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeechFailedEvent".
 */
export interface SpeechFailedEvent {
  dropped?: number;
  id: string | null;
  played_s?: number;
  reason:
    "not_started" | "tts_error" | "llm_error" | "session_closed" | "cancelled" | "avatar_left";
  replay?: true;
  seq?: number;
  speech_id: string;
  started: boolean;
  t_ms?: number;
  timestamp: string;
  type: "speech_failed";
}
/**
 * What the user said, from the STT: final, or (opt-in ``interim``) interim.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UserTranscriptEvent".
 */
export interface UserTranscriptEvent {
  dropped?: number;
  final: boolean;
  language?: string;
  replay?: true;
  seq?: number;
  speaker_id?: string;
  t_ms?: number;
  text: string;
  text_truncated?: true;
  timestamp: string;
  type: "user_transcript";
}
/**
 * What the agent actually said in one speech (cut where the user interrupted it).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AgentTranscriptEvent".
 */
export interface AgentTranscriptEvent {
  dropped?: number;
  interrupted: boolean;
  replay?: true;
  seq?: number;
  speech_id: string;
  t_ms?: number;
  text: string;
  text_truncated?: true;
  timestamp: string;
  type: "agent_transcript";
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "AgentStateEvent".
 */
export interface AgentStateEvent {
  dropped?: number;
  new_state: string;
  old_state: string;
  replay?: true;
  seq?: number;
  t_ms?: number;
  timestamp: string;
  type: "agent_state";
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UserStateEvent".
 */
export interface UserStateEvent {
  dropped?: number;
  new_state: string;
  old_state: string;
  replay?: true;
  seq?: number;
  t_ms?: number;
  timestamp: string;
  type: "user_state";
}
/**
 * An item added to the session's history: a message, or an agent handoff.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ConversationItemEvent".
 */
export interface ConversationItemEvent {
  dropped?: number;
  interrupted?: boolean;
  item_id: string;
  item_type: "message" | "agent_handoff";
  new_agent?: string;
  replay?: true;
  role?: "system" | "developer" | "user" | "assistant";
  seq?: number;
  t_ms?: number;
  text?: string;
  text_truncated?: true;
  timestamp: string;
  type: "conversation_item";
}
/**
 * A function tool the agent ran; its arguments only with ``tool_arguments: true``.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ToolCallEvent".
 */
export interface ToolCallEvent {
  arguments?: string;
  arguments_truncated?: true;
  call_id: string;
  dropped?: number;
  name: string;
  replay?: true;
  seq?: number;
  status: "completed" | "error";
  t_ms?: number;
  timestamp: string;
  type: "tool_call";
}
/**
 * The session ended: every subscriber's last event, subscribed to or not.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "CallEndedEvent".
 */
export interface CallEndedEvent {
  dropped?: number;
  reason: string;
  replay?: true;
  seq?: number;
  t_ms?: number;
  timestamp: string;
  type: "call_ended";
}
/**
 * v1.3: the first model request that really carried this context entry.
 *
 * Detected from the chat context handed to the agent's LLM (its ``llm_node``), or for a
 * realtime model from the conversation the realtime session held when it began a response.
 * A keyed entry replaced by a later ``add_context`` is a new entry (its own ``request_id``).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ContextUsedEvent".
 */
export interface ContextUsedEvent {
  dropped?: number;
  entry_id: string;
  key: string | null;
  llm_call: LlmCall;
  replay?: true;
  request_id: string | null;
  seq?: number;
  t_ms?: number;
  timestamp: string;
  type: "context_used";
}
/**
 * v1.3: a context entry left before any model request carried it (never sent otherwise).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "ContextDroppedEvent".
 */
export interface ContextDroppedEvent {
  dropped?: number;
  entry_id: string;
  key: string | null;
  reason: "removed" | "replaced" | "expired" | "evicted" | "session_closed";
  replay?: true;
  request_id: string | null;
  seq?: number;
  t_ms?: number;
  timestamp: string;
  type: "context_dropped";
}
/**
 * v1.3: the agent's buffer no longer holds the events from ``from_seq`` to ``to_seq``
 * (``subscribe{since_seq}`` reached back too far); a ``snapshot`` event follows at once.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "EventsLostEvent".
 */
export interface EventsLostEvent {
  dropped?: number;
  from_seq: number;
  replay?: true;
  seq?: number;
  t_ms?: number;
  timestamp: string;
  to_seq: number;
  type: "events_lost";
}
/**
 * v1.3: a fresh :class:`Snapshot` after ``events_lost`` (the same fields, as an event).
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SnapshotEvent".
 */
export interface SnapshotEvent {
  dropped?: number;
  items: HistoryItem[];
  items_truncated?: true;
  pending_speeches: PendingSpeech[];
  replay?: true;
  seq?: number;
  state: AgentStateInfo;
  t_ms?: number;
  timestamp: string;
  type: "snapshot";
}
/**
 * ``POST /v1/agent/{agent_code}/speak``: make the agent say ``message`` now.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeakBody".
 */
export interface SpeakBody {
  /**
   * false: keep it out of the LLM's context and the history (fillers).
   */
  add_to_history?: boolean;
  /**
   * Hang up once this speech has played out (not if the user cut it).
   */
  end_call_after?: boolean;
  /**
   * What the agent says, verbatim, through its TTS.
   */
  message: string;
  /**
   * queue (the default): after what is playing and queued; interrupt: cut what is playing first; if_idle: only if nothing is playing or queued (else 409 BUSY).
   */
  mode?: ("queue" | "interrupt" | "if_idle") | null;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "SpeakResponse".
 */
export interface SpeakResponse {
  data: SpeakData;
  message: string;
  success: true;
}
export interface UpdateIOBody2 {
  /**
   * The agent's voice on or off.
   */
  agent_audio?: boolean | null;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
  /**
   * Transcription output on or off.
   */
  transcription?: boolean | null;
  /**
   * Listening to the user on or off.
   */
  user_audio?: boolean | null;
}
/**
 * ``POST /v1/agent/{agent_code}/update-instructions``: steer the current agent.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UpdateInstructionsBody".
 */
export interface UpdateInstructionsBody {
  /**
   * The instructions to add, or the new ones.
   */
  instructions: string;
  /**
   * append (default): added to the agent's own; replace: instead of them.
   */
  mode?: "append" | "replace";
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
}
/**
 * ``POST /v1/agent/{agent_code}/user-message``: text as the user's own turn.
 *
 * This interface was referenced by `ImaginexWire`'s JSON-Schema
 * via the `definition` "UserMessageBody".
 */
export interface UserMessageBody {
  /**
   * Stop the agent's current speech first.
   */
  interrupt?: boolean;
  /**
   * Let the agent answer it.
   */
  respond?: boolean;
  /**
   * Only this room; by default every room where the agent is live.
   */
  room_id?: string | null;
  /**
   * What the user says.
   */
  text: string;
}
