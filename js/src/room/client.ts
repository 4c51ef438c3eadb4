/**
 * `ContextClient`: drive the agent in a LiveKit room from any `livekit-client` `Room` (a web
 * page, an operator console). Python: sender/client.py and its collaborators, same behaviour:
 * it finds the agent by its `imaginex.agent_code` attribute, sends over RPC (or data packets),
 * keeps a request's id across retries, retries what may pass with a doubling jittered back-off,
 * and returns typed acks; speech and session events come back on the ack topic.
 */
import { ConnectionState, Room, RoomEvent, type RemoteParticipant } from "livekit-client";
import { AckTimeoutError, ContextError, PlayoutTimeoutError, SpeechFailedError, type PlayoutWait } from "../errors.js";
import type {
  Ack,
  AgentStateInfo,
  HistoryItem,
  SpeechFinishedEvent,
  SpeechStartedEvent,
  SuccessAck,
} from "../generated/wire.js";
import {
  ACK_TOPIC,
  AUDIO_STREAM_TOPIC,
  CONTEXT_TOPIC,
  MAX_CLIP_BYTES,
  PROTOCOL_VERSION,
  RPC_METHOD,
  SESSION_EVENT_TYPES,
  isAck,
  isSessionEvent,
  isSpeechEvent,
  parseServerMessage,
  type SessionEventType,
} from "../protocol.js";
import { checkSize, given, prepareRequest, type RequestInput } from "../requests.js";
import { DEFAULT_BACKOFF_MS, DEFAULT_RETRIES, retryDelayMs, sleep, within } from "../retry.js";
import { Signer } from "../signing.js";
import { chooseAgent } from "./agents.js";
import { rpcFailure } from "./rpc.js";
import { DEFAULT_EVENT_QUEUE_SIZE, EventSink, SessionEvents } from "./subscription.js";
import { CLOSED_MESSAGE, gone, PendingAcks, Playouts, unavailable, type Pending } from "./waiters.js";

export type Via = "rpc" | "data";

export const DEFAULT_TIMEOUT_MS = 5_000;
export const DEFAULT_AGENT_TIMEOUT_MS = 10_000;
export const DEFAULT_PLAYOUT_TIMEOUT_MS = 120_000;
/** Data packets to an agent that has not answered us yet are sent again this often. */
export const FIRST_CONTACT_RESEND_MS = 500;
const DISCONNECTED_MESSAGE = "The client was disconnected from the room.";

export interface ContextClientOptions {
  /** Send to this participant. Default: found in the room by `agentCode`, or the one agent. */
  agentIdentity?: string;
  /** Send to the participant publishing this code; also put in every request. */
  agentCode?: string;
  /** `"rpc"` (default): `performRpc`, the response is the ack. `"data"`: data packets. */
  via?: Via;
  /** Sign every request with this shared secret (`ContextPlugin(secret=...)`), anew per attempt. */
  secret?: string | Uint8Array;
  /** With `secret`: the signed sender the agent counts the requests as (protocol v1.2). */
  sender?: string;
  /** Milliseconds to wait for the ack to each attempt. Default 5000. */
  timeoutMs?: number;
  /** Attempts after the first, for timeouts and retryable errors. Default 2. */
  retries?: number;
  /** First delay between attempts (doubling, jittered, at least a `retry_after`). Default 250. */
  backoffMs?: number;
  /** Milliseconds to wait for the agent to appear in the room. Default 10000. */
  agentTimeoutMs?: number;
  /** Milliseconds to wait for a speech to finish. Default 120000. */
  playoutTimeoutMs?: number;
}

/** Per call: the request id (the dedup key; default 32 random hex digits) and the ack timeout. */
export interface CallOptions {
  id?: string;
  timeoutMs?: number;
}

export interface SpeakOptions extends CallOptions {
  /** Instead of verbatim text: what the LLM should say, in its own words. */
  instructions?: string;
  allowInterruptions?: boolean;
  interrupt?: boolean;
  mode?: "queue" | "interrupt" | "if_idle";
  endCallAfter?: boolean;
  addToHistory?: boolean;
  /** v1.3: cancel it if it has not started playing this many seconds after the agent applied it
   * (`SpeechFailedError`, reason `not_started`). Default: the agent's, 30 s. */
  startWithinS?: number;
  /** v1.3: a recorded clip (WAV, MP3, Ogg/Opus, FLAC, AAC; at most 4 MiB and 30 s) to play
   * instead of synthesized speech, streamed to the agent first; `text` is then its transcript. */
  audio?: Uint8Array | ArrayBuffer | Blob;
  /** The clip's MIME type. Default: from its first bytes (or the Blob's type). */
  audioMimeType?: string;
}

export interface AddContextOptions extends CallOptions {
  key?: string;
  role?: "system" | "developer" | "user" | "assistant";
  triggerReply?: boolean;
  scope?: "persistent" | "next_turn";
  ttlS?: number;
}

/** What `speak` resolves with: the ack, and the speech's playout as promises. */
export interface Speech {
  readonly id: string;
  readonly ack: SuccessAck;
  /** Resolves when the speech starts playing (`speech_started`). */
  started(options?: { timeoutMs?: number }): Promise<SpeechStartedEvent>;
  /**
   * Resolves when it has played out or was cut (`speech_finished`: `interrupted`, `played_s`);
   * rejects with `SpeechFailedError` when it did not play (v1.3 `speech_failed`, its `reason`).
   */
  finished(options?: { timeoutMs?: number }): Promise<SpeechFinishedEvent>;
}

export interface SubscribeOptions {
  events?: readonly SessionEventType[];
  interim?: boolean;
  toolArguments?: boolean;
  queueSize?: number;
  timeoutMs?: number;
  /**
   * v1.3, resume: the `seq` of the last event seen (an earlier subscription's `lastSeq`). The
   * agent replays what it still holds after it first (each `replay: true`), or sends
   * `events_lost` and a fresh `snapshot` when it no longer holds it all, then goes live.
   */
  sinceSeq?: number;
}

class NoAck extends Error {}

export class ContextClient {
  private readonly options: Required<Pick<ContextClientOptions, "via" | "timeoutMs" | "retries" | "backoffMs" | "agentTimeoutMs" | "playoutTimeoutMs">>;
  private readonly pending = new PendingAcks();
  private readonly playouts = new Playouts();
  private readonly signer: Signer | null;
  private readonly sinks = new Set<EventSink>();
  private readonly heardFrom = new Set<string>();
  private readonly listeners: [RoomEvent, (...args: never[]) => void][];
  private rosterChanged: () => void = () => {};
  private subscription: SessionEvents | null = null;
  private subscribing = false;
  private ownsRoom = false;
  private isClosed = false;

  /**
   * Wraps a `Room` you already have (connected, or about to be); closing the client leaves it
   * connected. The participant must be trusted by the agent (`allowed_identities`), unless
   * requests are signed (`secret`).
   */
  constructor(
    readonly room: Room,
    private readonly config: ContextClientOptions = {},
  ) {
    const via = config.via ?? "rpc";
    if (via !== "rpc" && via !== "data") throw new Error("via must be 'rpc' or 'data'");
    this.options = {
      via,
      timeoutMs: config.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      retries: config.retries ?? DEFAULT_RETRIES,
      backoffMs: config.backoffMs ?? DEFAULT_BACKOFF_MS,
      agentTimeoutMs: config.agentTimeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS,
      playoutTimeoutMs: config.playoutTimeoutMs ?? DEFAULT_PLAYOUT_TIMEOUT_MS,
    };
    const o = this.options;
    if (!(o.timeoutMs > 0) || !(o.agentTimeoutMs >= 0) || !(o.playoutTimeoutMs > 0)) throw new Error("timeouts must be positive");
    if (!(o.retries >= 0) || !(o.backoffMs >= 0)) throw new Error("retries and backoff must not be negative");
    if (config.sender !== undefined && !config.secret) throw new Error("sender needs a secret to sign with");
    this.signer = config.secret ? new Signer(config.secret, config.sender) : null;
    const changed = (): void => this.rosterChanged();
    this.listeners = [
      [RoomEvent.DataReceived, this.onData as never],
      [RoomEvent.ParticipantConnected, changed],
      [RoomEvent.ParticipantAttributesChanged, changed],
      [RoomEvent.ParticipantDisconnected, this.onLeft as never],
      [RoomEvent.Disconnected, () => this.failEverything(DISCONNECTED_MESSAGE)],
    ];
    for (const [event, listener] of this.listeners) room.on(event, listener);
  }

  /** Joins `url` with `token` (minted by your backend) and returns a client that leaves on close. */
  static async connect(url: string, token: string, options: ContextClientOptions = {}): Promise<ContextClient> {
    const room = new Room();
    await room.connect(url, token);
    const client = new ContextClient(room, options);
    client.ownsRoom = true;
    return client;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Stops listening, fails what still waits, leaves the room if it is ours. Idempotent. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    for (const [event, listener] of this.listeners) this.room.off(event, listener);
    this.failEverything(CLOSED_MESSAGE);
    if (this.ownsRoom) await this.room.disconnect();
  }

  // ------------------------------------------------------------------------------- requests

  /**
   * Makes the agent say `text` now, through its TTS (or phrase `instructions` with its LLM, or
   * play a recorded `audio` clip through the same path as TTS audio).
   */
  async speak(text: string | null, options: SpeakOptions = {}): Promise<Speech> {
    const clip = options.audio !== undefined ? await clipBytes(options.audio, options.audioMimeType) : null;
    const prepared = this.prepare({
      type: "speak",
      ...given({
        id: options.id,
        message: text,
        instructions: options.instructions,
        allow_interruptions: options.allowInterruptions ?? true,
        interrupt: options.interrupt ?? false,
        mode: options.mode,
        end_call_after: options.endCallAfter || undefined, // v1.1: only when not the default
        add_to_history: options.addToHistory === false ? false : undefined,
        start_within_s: options.startWithinS,
        // checked now with a stand-in: the clip streams only for a valid request
        audio: clip !== null ? { stream_id: "pending" } : undefined,
      }),
    });
    if (clip !== null) prepared.audio = await this.streamClip(clip);
    const ack = await this.deliver(prepared, options.timeoutMs);
    return this.speech(prepared.id as string, ack);
  }

  /**
   * v1.3: streams a recorded clip to the agent (a LiveKit byte stream on `imaginex.audio`), for
   * a `speak` request built by hand (`send`); returns its `audio` field. `speak({ audio })`
   * does this itself. The agent keeps the clip for a minute waiting for its speak.
   */
  async sendClip(audio: Uint8Array | ArrayBuffer | Blob, options: { mimeType?: string } = {}): Promise<{ stream_id: string; sha256: string }> {
    this.ensureOpen();
    return this.streamClip(await clipBytes(audio, options.mimeType));
  }

  private async streamClip(clip: Clip): Promise<{ stream_id: string; sha256: string }> {
    const agent = await this.resolveAgent();
    const streamId = `imaginex-clip-${crypto.randomUUID().replaceAll("-", "")}`;
    try {
      const writer = await this.room.localParticipant.streamBytes({
        name: "clip",
        topic: AUDIO_STREAM_TOPIC,
        destinationIdentities: [agent],
        streamId,
        mimeType: clip.mimeType,
        totalSize: clip.data.byteLength,
      });
      for (let start = 0; start < clip.data.byteLength; start += CLIP_CHUNK_BYTES) {
        await writer.write(clip.data.subarray(start, start + CLIP_CHUNK_BYTES));
      }
      await writer.close();
    } catch (error) {
      throw new ContextError("LIVEKIT_UNAVAILABLE", "The audio clip could not be streamed to the agent.", {
        retryable: true,
        cause: error,
      });
    }
    return { stream_id: streamId, sha256: await sha256Hex(clip.data) };
  }

  /** Gives the agent background knowledge for its next replies; nothing is spoken. */
  addContext(text: string, options: AddContextOptions = {}): Promise<SuccessAck> {
    return this.call(
      {
        type: "add_context",
        ...given({
          id: options.id,
          context: text,
          key: options.key,
          role: options.role ?? "system",
          trigger_reply: options.triggerReply ?? false,
          scope: options.scope ?? "persistent",
          ttl_s: options.ttlS,
        }),
      },
      options,
    );
  }

  /** Removes the context added under `key` (`data.removed` says whether there was one). */
  removeContext(key: string, options: CallOptions = {}): Promise<SuccessAck> {
    return this.call({ type: "remove_context", ...given({ key, id: options.id }) }, options);
  }

  /** The agent's and the user's state and the context entries the plugin holds. */
  async getState(options: { timeoutMs?: number } = {}): Promise<AgentStateInfo> {
    const ack = await this.call({ type: "get_state" }, options);
    if (!ack.data.state) throw missing(ack, "get_state", "state");
    return ack.data.state;
  }

  /** Ends the conversation (after what is playing and queued, unless `afterSpeech: false`). */
  endCall(options: CallOptions & { afterSpeech?: boolean; reason?: string } = {}): Promise<SuccessAck> {
    return this.call(
      { type: "end_call", ...given({ id: options.id, after_speech: options.afterSpeech ?? true, reason: options.reason }) },
      options,
    );
  }

  /** Stops what the agent is saying and what is queued (`force`: also protected speech). */
  interrupt(options: CallOptions & { force?: boolean } = {}): Promise<SuccessAck> {
    return this.call({ type: "interrupt", ...given({ id: options.id, force: options.force ?? false }) }, options);
  }

  /** Drops one of this sender's speeches by the id of the request that started it. */
  cancel(targetId: string, options: CallOptions = {}): Promise<SuccessAck> {
    return this.call({ type: "cancel", ...given({ id: options.id, target_id: targetId }) }, options);
  }

  /** Turns the agent's voice, listening to the user or transcription on or off (at least one). */
  updateIO(
    switches: { agentAudio?: boolean; userAudio?: boolean; transcription?: boolean },
    options: CallOptions = {},
  ): Promise<SuccessAck> {
    return this.call(
      {
        type: "update_io",
        ...given({
          id: options.id,
          agent_audio: switches.agentAudio,
          user_audio: switches.userAudio,
          transcription: switches.transcription,
        }),
      },
      options,
    );
  }

  /** Steers the current agent: appends to its instructions, or replaces them. */
  updateInstructions(instructions: string, options: CallOptions & { mode?: "append" | "replace" } = {}): Promise<SuccessAck> {
    return this.call(
      { type: "update_instructions", ...given({ id: options.id, instructions, mode: options.mode ?? "append" }) },
      options,
    );
  }

  /** Gives the current agent its own instructions back. */
  resetInstructions(options: CallOptions = {}): Promise<SuccessAck> {
    return this.call({ type: "reset_instructions", ...given({ id: options.id }) }, options);
  }

  /** Adds `text` as the user's own turn; with `respond` (default) the agent answers it. */
  userMessage(text: string, options: CallOptions & { respond?: boolean; interrupt?: boolean } = {}): Promise<SuccessAck> {
    return this.call(
      {
        type: "user_message",
        ...given({ id: options.id, text, respond: options.respond ?? true, interrupt: options.interrupt ?? false }),
      },
      options,
    );
  }

  /** The newest conversation items, oldest first (`truncated` when fewer fit one packet). */
  async getHistory(options: { limit?: number; timeoutMs?: number } = {}): Promise<{ items: HistoryItem[]; truncated: boolean }> {
    const ack = await this.call({ type: "get_history", limit: options.limit ?? 50 }, options);
    if (!ack.data.history) throw missing(ack, "get_history", "history");
    return { items: ack.data.history, truncated: ack.data.truncated === true };
  }

  /** Sends any protocol request; one without an `id` gets a random one (read it from the ack). */
  send(request: RequestInput, options: { timeoutMs?: number } = {}): Promise<SuccessAck> {
    return this.call(request, options);
  }

  /**
   * Waits for the end of a speech this client requested (kept for 10 minutes): resolves with
   * `speech_finished`, rejects with `SpeechFailedError` for a speech that did not play (v1.3),
   * and with `PlayoutTimeoutError` after the timeout, having asked the agent why (`why`).
   */
  waitForPlayout(requestId: string, options: { timeoutMs?: number } = {}): Promise<SpeechFinishedEvent> {
    return this.waitForSpeech<SpeechFinishedEvent>(requestId, "speech_finished", options.timeoutMs, null);
  }

  /** Waits for the `speech_started` of a speech this client requested. */
  waitForStart(requestId: string, options: { timeoutMs?: number } = {}): Promise<SpeechStartedEvent> {
    return this.waitForSpeech<SpeechStartedEvent>(requestId, "speech_started", options.timeoutMs, null);
  }

  /** The agent's identity, waiting for it to join if needed. */
  findAgent(options: { timeoutMs?: number } = {}): Promise<string> {
    this.ensureOpen();
    return this.resolveAgent(options.timeoutMs);
  }

  // ---------------------------------------------------------------------------- live events

  /**
   * Watches the call: resolves once the agent acknowledged the subscription, then yields its
   * session events until `call_ended`. One subscription per client at a time.
   */
  async subscribe(options: SubscribeOptions = {}): Promise<SessionEvents> {
    this.ensureOpen();
    const events = options.events ?? SESSION_EVENT_TYPES;
    if (events.length === 0) throw new Error("events must name at least one event");
    const queueSize = options.queueSize ?? DEFAULT_EVENT_QUEUE_SIZE;
    if (!(queueSize >= 1)) throw new Error("queueSize must be at least 1");
    const sinceSeq = options.sinceSeq ?? null;
    if (sinceSeq !== null && !(Number.isInteger(sinceSeq) && sinceSeq >= 0)) throw new Error("sinceSeq must be a whole number, not negative");
    if (this.subscription !== null || this.subscribing) {
      throw new Error("this client already has a subscription open; close it first");
    }
    this.subscribing = true;
    let sink: EventSink | null = null;
    let ack: SuccessAck;
    try {
      const agent = await this.resolveAgent();
      sink = new EventSink(agent, queueSize, events);
      if (sinceSeq !== null) sink.lastSeq = sinceSeq; // nothing at or before it is handed out again
      this.sinks.add(sink);
      ack = await this.call(
        {
          type: "subscribe",
          events: [...events],
          interim: options.interim ?? false,
          tool_arguments: options.toolArguments ?? false,
          ...given({ since_seq: sinceSeq }),
        },
        options,
      );
    } catch (error) {
      if (sink !== null) this.sinks.delete(sink);
      throw error;
    } finally {
      this.subscribing = false;
    }
    const subscription = new SessionEvents(ack, sink, {
      unsubscribe: (timeoutMs) => this.call({ type: "unsubscribe" }, { timeoutMs }),
      usable: () => !this.isClosed && this.room.state === ConnectionState.Connected,
      closed: (which) => {
        this.sinks.delete(which.sink);
        if (this.subscription === which) this.subscription = null;
      },
    }, sinceSeq);
    this.subscription = subscription;
    return subscription;
  }

  /** Ends this sender's subscription at the agent; an open iteration of this client ends too. */
  async unsubscribe(options: CallOptions = {}): Promise<SuccessAck> {
    const ack = await this.call({ type: "unsubscribe", ...given({ id: options.id }) }, options);
    const open = this.subscription;
    if (open !== null) {
      open.unsubscribedElsewhere = true;
      open.sink.finish();
    }
    return ack;
  }

  // ---------------------------------------------------------------------------- the machinery

  private prepare(request: RequestInput): Record<string, unknown> {
    this.ensureOpen();
    const prepared = prepareRequest(request, { agentCode: this.config.agentCode });
    // this client knows v1.3's events (speech_failed, context_used, ...); older agents ignore it
    if (prepared.protocol === undefined || prepared.protocol === null) prepared.protocol = PROTOCOL_VERSION;
    return prepared;
  }

  private call(request: RequestInput, options: { timeoutMs?: number }): Promise<SuccessAck> {
    try {
      return this.deliver(this.prepare(request), options.timeoutMs);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  private speech(id: string, ack: SuccessAck): Speech {
    return {
      id,
      ack,
      started: (o = {}) => this.waitForSpeech<SpeechStartedEvent>(id, "speech_started", o.timeoutMs, ack),
      finished: (o = {}) => this.waitForSpeech<SpeechFinishedEvent>(id, "speech_finished", o.timeoutMs, ack),
    };
  }

  private waitForSpeech<T extends SpeechStartedEvent | SpeechFinishedEvent>(
    requestId: string,
    type: T["type"],
    timeoutMs: number | undefined,
    accepted: SuccessAck | null,
  ): Promise<T> {
    try {
      this.ensureOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    const wait = timeoutMs ?? this.options.playoutTimeoutMs;
    const what = type === "speech_started" ? "start" : "finish";
    const timedOut = new PlayoutTimeoutError("", { requestId, accepted });
    return this.playouts.wait<T>(requestId, type, wait, () => timedOut).catch(async (error: unknown) => {
      if (error !== timedOut) {
        if (error instanceof SpeechFailedError && accepted !== null) throw new SpeechFailedError(error.event, { accepted });
        throw error;
      }
      const why = await this.whyUnfinished(requestId);
      throw new PlayoutTimeoutError(`The speech did not ${what} within ${wait / 1000} s; ${WHY[why]}`, { requestId, accepted, why });
    });
  }

  /** Asks the agent whether the speech of `requestId` is still queued or playing. */
  private async whyUnfinished(requestId: string): Promise<PlayoutWait> {
    const speechId = this.playouts.speechId(requestId);
    if (speechId === undefined || this.isClosed || this.room.state !== ConnectionState.Connected) return "unknown";
    let state: AgentStateInfo;
    try {
      state = await this.getState({ timeoutMs: this.options.timeoutMs });
    } catch {
      return "unknown";
    }
    if (state.pending_speeches.includes(speechId)) return "pending";
    return state.pending_speeches_truncated ? "unknown" : "lost";
  }

  /** Sends a prepared request until it is acknowledged, retrying what may pass (same id). */
  private async deliver(obj: Record<string, unknown>, timeoutMs: number | undefined): Promise<SuccessAck> {
    const requestId = obj.id as string;
    const attemptTimeout = timeoutMs ?? this.options.timeoutMs;
    if (!(attemptTimeout > 0)) throw new Error("timeout must be positive");
    const pending = this.pending.add(requestId);
    const body = JSON.stringify(obj);
    try {
      for (let attempt = 0; ; attempt++) {
        const outcome = await this.tryOnce(pending, body, attemptTimeout, attempt);
        if (!(outcome instanceof ContextError)) {
          this.playouts.accepted(outcome);
          return outcome;
        }
        if (!outcome.retryable || attempt >= this.options.retries || this.isClosed) throw outcome;
        await sleep(retryDelayMs(attempt, this.options.backoffMs, outcome.retryAfter));
      }
    } finally {
      this.pending.remove(requestId);
    }
  }

  private async tryOnce(pending: Pending, body: string, timeoutMs: number, attempt: number): Promise<SuccessAck | ContextError> {
    let ack: Ack;
    try {
      ack = await this.attempt(pending, body, timeoutMs);
    } catch (error) {
      if (error instanceof NoAck) {
        const tries = attempt ? ` (${attempt + 1} attempts).` : ".";
        return new AckTimeoutError(`No ack from agent '${pending.agent}' within ${timeoutMs / 1000} s${tries}`, {
          requestId: pending.requestId,
          attempts: attempt + 1,
        });
      }
      if (error instanceof ContextError) return error;
      throw error;
    }
    return ack.success ? ack : ContextError.fromAck(ack);
  }

  private async attempt(pending: Pending, body: string, timeoutMs: number): Promise<Ack> {
    const requestId = pending.requestId;
    this.ensureOpen(requestId);
    const state = this.room.state;
    if (state !== ConnectionState.Connected) {
      // reconnecting: the SDK is bringing the connection back, so a later attempt may pass
      const reconnecting = state === ConnectionState.Reconnecting || state === ConnectionState.SignalReconnecting;
      throw new ContextError("LIVEKIT_UNAVAILABLE", "The room is not connected.", { requestId, retryable: reconnecting });
    }
    const agent = await this.resolveAgent();
    const payload = this.signer ? await this.signer.sign(body) : body;
    checkSize(payload, requestId);
    pending.agent = agent;
    this.playouts.sent(requestId, agent);
    return this.options.via === "rpc" ? this.rpcAttempt(pending, agent, payload, timeoutMs) : this.dataAttempt(pending, agent, payload, timeoutMs);
  }

  private async rpcAttempt(pending: Pending, agent: string, payload: string, timeoutMs: number): Promise<Ack> {
    const requestId = pending.requestId;
    const call = this.room.localParticipant.performRpc({
      destinationIdentity: agent,
      method: RPC_METHOD,
      payload,
      responseTimeout: timeoutMs,
    });
    // the client closing, the room going or the agent leaving ends the wait at once
    let fail!: (error: ContextError) => void;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    pending.fail = fail;
    call.catch(() => {}); // once we stop waiting (our deadline, a failure), nobody else does
    let response: string | null;
    try {
      // livekit-client waits at least 8 s for a response: our own, shorter deadline wins
      response = await within(Promise.race([call, failed]), timeoutMs);
    } catch (error) {
      if (error instanceof ContextError) throw error;
      const failure = rpcFailure(error, agent, requestId);
      if (failure.code === "TIMEOUT") throw new NoAck();
      throw failure;
    } finally {
      pending.fail = null;
    }
    if (response === null) throw new NoAck();
    return ownAck(response, agent, requestId);
  }

  private async dataAttempt(pending: Pending, agent: string, payload: string, timeoutMs: number): Promise<Ack> {
    const deadline = Date.now() + timeoutMs;
    let settle!: (ack: Ack) => void;
    let fail!: (error: ContextError) => void;
    // registered before publishing: the ack may arrive before publishData returns
    const answered = new Promise<Ack>((resolve, reject) => ((settle = resolve), (fail = reject)));
    answered.catch(() => {});
    pending.settle = settle;
    pending.fail = fail;
    const bytes = new TextEncoder().encode(payload);
    try {
      for (;;) {
        try {
          await this.room.localParticipant.publishData(bytes, { reliable: true, destinationIdentities: [agent], topic: CONTEXT_TOPIC });
        } catch (error) {
          throw new ContextError("LIVEKIT_UNAVAILABLE", `Could not send the message to agent '${agent}'.`, {
            requestId: pending.requestId,
            retryable: true,
            cause: error,
          });
        }
        // until the agent has answered us once it may not know us yet (a newcomer's first
        // packets can reach it before the news that we joined): the same packet goes again
        let wait = deadline - Date.now();
        if (!this.heardFrom.has(agent)) wait = Math.min(wait, FIRST_CONTACT_RESEND_MS);
        const ack = await within(answered, Math.max(wait, 0));
        if (ack !== null) {
          this.heardFrom.add(agent);
          return ack;
        }
        if (Date.now() >= deadline) throw new NoAck();
      }
    } finally {
      pending.settle = null;
      pending.fail = null;
    }
  }

  private async resolveAgent(timeoutMs?: number): Promise<string> {
    const wait = timeoutMs ?? this.options.agentTimeoutMs;
    const deadline = Date.now() + wait;
    for (;;) {
      this.ensureOpen();
      let changed!: () => void;
      const roster = new Promise<void>((resolve) => (changed = resolve));
      this.rosterChanged = changed; // set before looking, so a change after the look wakes us
      let ambiguous: ContextError | null = null;
      let found: string | null = null;
      try {
        found = this.matchAgent();
      } catch (error) {
        if (!(error instanceof ContextError)) throw error;
        ambiguous = error; // may resolve itself: an agent publishes its code a moment after joining
      }
      if (found !== null) return found;
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw ambiguous ?? new ContextError("AGENT_NOT_FOUND", this.noAgentMessage(wait), { retryable: false });
      await within(roster, remaining);
    }
  }

  private matchAgent(): string | null {
    const participants = this.room.remoteParticipants;
    const identity = this.config.agentIdentity;
    if (identity !== undefined) return participants.has(identity) ? identity : null;
    return chooseAgent(
      [...participants.values()].map((p) => ({ identity: p.identity, kind: p.kind as number, attributes: p.attributes ?? {} })),
      { agentCode: this.config.agentCode ?? null, room: this.room.name },
    );
  }

  private noAgentMessage(waitedMs: number): string {
    const room = this.room.name;
    const waited = `waited ${waitedMs / 1000} s`;
    if (this.config.agentIdentity !== undefined) return `Participant '${this.config.agentIdentity}' is not in room '${room}' (${waited}).`;
    if (this.config.agentCode !== undefined) {
      return (
        `No participant with agent code '${this.config.agentCode}' is in room '${room}' (${waited}); ` +
        "the agent publishes its code once ContextPlugin(agent_code=...) has started."
      );
    }
    return `No agent participant is in room '${room}' (${waited}).`;
  }

  private ensureOpen(requestId: string | null = null): void {
    if (this.isClosed) throw unavailable(CLOSED_MESSAGE)(requestId);
  }

  private failEverything(message: string): void {
    this.rosterChanged();
    const make = unavailable(message);
    this.pending.fail(make);
    this.playouts.fail(make);
    for (const sink of this.sinks) sink.finish(make(null));
  }

  // room callbacks: they only route, and never throw
  private readonly onData = (payload: Uint8Array, participant?: RemoteParticipant, _kind?: unknown, topic?: string): void => {
    if (topic !== ACK_TOPIC || participant === undefined) return;
    const sender = participant.identity;
    const message = parseServerMessage(payload);
    if (message === null) return;
    if (isAck(message)) {
      this.pending.onAck(message, sender);
      return;
    }
    if (isSpeechEvent(message)) this.playouts.onEvent(message, sender);
    // every event (a speech's too) to the subscriptions that asked for its kind
    if (isSpeechEvent(message) || isSessionEvent(message)) for (const sink of this.sinks) if (sink.agent === sender) sink.put(message);
  };

  private readonly onLeft = (participant: RemoteParticipant): void => {
    this.rosterChanged();
    const left = participant.identity;
    // retryable: the next attempt waits for the agent to come back
    this.pending.fail(gone(left, "answering", true), left);
    this.playouts.fail(gone(left, "the speech finished", false), left);
    for (const sink of this.sinks) {
      if (sink.agent === left) {
        sink.finish(new ContextError("AGENT_NOT_FOUND", `Agent '${left}' left the room before the call ended.`, { retryable: false }));
      }
    }
  };
}

function ownAck(response: string, agent: string, requestId: string): Ack {
  const ack = parseServerMessage(response);
  if (ack === null || !isAck(ack)) {
    throw new ContextError("INTERNAL_ERROR", `Participant '${agent}' answered the RPC with something that is not an ack.`, {
      requestId,
      retryable: false,
    });
  }
  // an error ack may carry no id (the agent could not read the request); anything else must be
  // this request's ack, or a broken agent could confirm what it never applied
  if (ack.id !== requestId && !(!ack.success && ack.id === null)) {
    throw new ContextError(
      "INTERNAL_ERROR",
      `Participant '${agent}' answered the RPC with the ack of another request; whether this one was applied is unknown.`,
      { requestId, retryable: false },
    );
  }
  return ack;
}

const WHY: Record<PlayoutWait, string> = {
  pending: "the agent still has it queued or playing.",
  lost: "the agent no longer has it: its end was sent but did not arrive here.",
  unknown: "whether the agent still has it could not be asked.",
};

/** Bytes handed to the stream writer at a time (LiveKit splits them into packets itself). */
const CLIP_CHUNK_BYTES = 64 * 1024;

interface Clip {
  data: Uint8Array;
  mimeType: string;
}

// the first bytes of the formats the agent's decoder reads, for a clip given as bytes
const MAGIC: readonly [number[], string][] = [
  [[0x52, 0x49, 0x46, 0x46], "audio/wav"],
  [[0x49, 0x44, 0x33], "audio/mpeg"],
  [[0xff, 0xfb], "audio/mpeg"],
  [[0xff, 0xf3], "audio/mpeg"],
  [[0x4f, 0x67, 0x67, 0x53], "audio/ogg"],
  [[0x66, 0x4c, 0x61, 0x43], "audio/flac"],
];

/** A clip's bytes and type, refused as the Python client refuses it (empty, over 4 MiB). */
async function clipBytes(audio: Uint8Array | ArrayBuffer | Blob, mimeType?: string): Promise<Clip> {
  let data: Uint8Array;
  let type = mimeType;
  if (audio instanceof Uint8Array) data = audio;
  else if (audio instanceof ArrayBuffer) data = new Uint8Array(audio);
  else {
    data = new Uint8Array(await audio.arrayBuffer());
    type ??= audio.type || undefined;
  }
  if (data.byteLength === 0) throw new ContextError("VALIDATION_ERROR", "The audio clip is empty.", { retryable: false });
  if (data.byteLength > MAX_CLIP_BYTES) {
    throw new ContextError(
      "PAYLOAD_TOO_LARGE",
      `The audio clip is larger than ${MAX_CLIP_BYTES.toLocaleString("en-US")} bytes, the most an agent takes.`,
      { retryable: false },
    );
  }
  type ??= MAGIC.find(([magic]) => magic.every((byte, i) => data[i] === byte))?.[1];
  return { data, mimeType: type ?? "application/octet-stream" };
}

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data as BufferSource));
  return [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function missing(ack: SuccessAck, type: string, field: string): ContextError {
  return new ContextError("INTERNAL_ERROR", `The agent's ${type} answer carries no ${field}.`, { requestId: ack.id, retryable: false });
}
