/**
 * `ContextClient`: drive the agent in a LiveKit room from any `livekit-client` `Room` (a web
 * page, an operator console). Python: sender/client.py and its collaborators, same behaviour:
 * it finds the agent by its `imaginex.agent_code` attribute, sends over RPC (or data packets),
 * keeps a request's id across retries, retries what may pass with a doubling jittered back-off,
 * and returns typed acks; speech and session events come back on the ack topic.
 */
import { ConnectionState, Room, RoomEvent, type RemoteParticipant } from "livekit-client";
import { AckTimeoutError, ContextError } from "../errors.js";
import type { Ack, AgentStateInfo, HistoryItem, SpeechFinishedEvent, SpeechStartedEvent, SuccessAck } from "../generated/wire.js";
import { ACK_TOPIC, CONTEXT_TOPIC, PROTOCOL_VERSION, RPC_METHOD, isAck, isSessionEvent, isSpeechEvent, parseServerMessage } from "../protocol.js";
import { checkSize, given, prepareRequest, type RequestInput } from "../requests.js";
import { retryDelayMs, sleep, within } from "../retry.js";
import { Signer } from "../signing.js";
import { clipBytes, streamClip, type Clip } from "./clips.js";
import { AgentLocator } from "./locator.js";
import { clientSettings, type AddContextOptions, type CallOptions, type ClientSettings, type ContextClientOptions, type SpeakOptions } from "./options.js";
import { SpeechWaits, type Speech } from "./playout.js";
import { rpcFailure } from "./rpc.js";
import { Subscriptions, type SessionEvents, type SubscribeOptions } from "./subscription.js";
import { CLOSED_MESSAGE, gone, PendingAcks, Playouts, unavailable, type Pending } from "./waiters.js";

/** Data packets to an agent that has not answered us yet are sent again this often. */
export const FIRST_CONTACT_RESEND_MS = 500;
const DISCONNECTED_MESSAGE = "The client was disconnected from the room.";

class NoAck extends Error {}

export class ContextClient {
  private readonly options: ClientSettings;
  private readonly pending = new PendingAcks();
  private readonly playouts = new Playouts();
  private readonly speeches: SpeechWaits;
  private readonly subscriptions: Subscriptions;
  private readonly locator: AgentLocator;
  private readonly signer: Signer | null;
  private readonly heardFrom = new Set<string>();
  private readonly listeners: [RoomEvent, (...args: never[]) => void][];
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
    this.options = clientSettings(config);
    const o = this.options;
    this.signer = config.secret ? new Signer(config.secret, config.sender) : null;
    const ensureOpen = (): void => this.ensureOpen();
    const connected = (): boolean => !this.isClosed && room.state === ConnectionState.Connected;
    this.locator = new AgentLocator(room, {
      agentIdentity: config.agentIdentity,
      agentCode: config.agentCode,
      timeoutMs: o.agentTimeoutMs,
      ensureOpen,
    });
    this.speeches = new SpeechWaits(this.playouts, {
      timeoutMs: o.playoutTimeoutMs,
      ensureOpen,
      agentState: () => (connected() ? this.getState({ timeoutMs: o.timeoutMs }) : null),
    });
    this.subscriptions = new Subscriptions({
      resolveAgent: () => this.locator.resolve(),
      call: (request, options) => this.call(request, options),
      usable: connected,
    });
    const changed = (): void => this.locator.changed();
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
    return this.speeches.speech(prepared.id as string, ack);
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
    return streamClip(this.room.localParticipant, await this.locator.resolve(), clip);
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
    return this.speeches.wait<SpeechFinishedEvent>(requestId, "speech_finished", options.timeoutMs, null);
  }

  /** Waits for the `speech_started` of a speech this client requested. */
  waitForStart(requestId: string, options: { timeoutMs?: number } = {}): Promise<SpeechStartedEvent> {
    return this.speeches.wait<SpeechStartedEvent>(requestId, "speech_started", options.timeoutMs, null);
  }

  /** The agent's identity, waiting for it to join if needed. */
  findAgent(options: { timeoutMs?: number } = {}): Promise<string> {
    this.ensureOpen();
    return this.locator.resolve(options.timeoutMs);
  }

  // ---------------------------------------------------------------------------- live events

  /**
   * Watches the call: resolves once the agent acknowledged the subscription, then yields its
   * session events until `call_ended`. One subscription per client at a time.
   */
  async subscribe(options: SubscribeOptions = {}): Promise<SessionEvents> {
    this.ensureOpen();
    return this.subscriptions.open(options);
  }

  /** Ends this sender's subscription at the agent; an open iteration of this client ends too. */
  unsubscribe(options: CallOptions = {}): Promise<SuccessAck> {
    return this.subscriptions.unsubscribe(options);
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
    const agent = await this.locator.resolve();
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

  private ensureOpen(requestId: string | null = null): void {
    if (this.isClosed) throw unavailable(CLOSED_MESSAGE)(requestId);
  }

  private failEverything(message: string): void {
    this.locator.changed();
    const make = unavailable(message);
    this.pending.fail(make);
    this.playouts.fail(make);
    this.subscriptions.fail(() => make(null));
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
    if (isSpeechEvent(message) || isSessionEvent(message)) this.subscriptions.put(message, sender);
  };

  private readonly onLeft = (participant: RemoteParticipant): void => {
    this.locator.changed();
    const left = participant.identity;
    // retryable: the next attempt waits for the agent to come back
    this.pending.fail(gone(left, "answering", true), left);
    this.playouts.fail(gone(left, "the speech finished", false), left);
    this.subscriptions.fail(
      () => new ContextError("AGENT_NOT_FOUND", `Agent '${left}' left the room before the call ended.`, { retryable: false }),
      left,
    );
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

function missing(ack: SuccessAck, type: string, field: string): ContextError {
  return new ContextError("INTERNAL_ERROR", `The agent's ${type} answer carries no ${field}.`, { requestId: ack.id, retryable: false });
}
