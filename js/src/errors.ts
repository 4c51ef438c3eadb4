/**
 * One error family, the Python package's (errors.py): every error this package throws on
 * purpose is an {@link ImaginexError} with a `code`, a one-sentence `message` and whether trying
 * again may help (`retryable`).
 */
import type { ErrorAck, ErrorCode, SpeechFailedEvent, SuccessAck } from "./generated/wire.js";

export type { ErrorCode };

export const ERROR_CODES: readonly ErrorCode[] = [
  "VALIDATION_ERROR",
  "UNAUTHORIZED",
  "AGENT_NOT_FOUND",
  "NO_ACTIVE_ROOMS",
  "PAYLOAD_TOO_LARGE",
  "RATE_LIMITED",
  "NOT_READY",
  "BUSY",
  "INTERNAL_ERROR",
  "LIVEKIT_UNAVAILABLE",
  "TIMEOUT",
  "ID_REUSED",
  "NOT_FOUND",
  "SPEECH_FAILED",
];

/** Codes a later attempt may not get; other codes are final unless the thrower says otherwise. */
export const RETRYABLE_CODES: ReadonlySet<string> = new Set(["NOT_READY", "RATE_LIMITED", "TIMEOUT"]);

export class ImaginexError extends Error {
  /** The protocol's error code (the gateway adds a few of its own, such as `REQUEST_IN_PROGRESS`). */
  readonly code: ErrorCode | (string & {});
  /** Whether doing the same again may succeed. */
  readonly retryable: boolean;

  constructor(code: ErrorCode | (string & {}), message: string, options?: { retryable?: boolean; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ImaginexError";
    this.code = code;
    this.retryable = options?.retryable ?? RETRYABLE_CODES.has(code);
  }
}

export interface ContextErrorOptions {
  requestId?: string | null;
  /** Seconds to wait before sending again (`RATE_LIMITED`). */
  retryAfter?: number | null;
  ack?: ErrorAck | null;
  retryable?: boolean;
  cause?: unknown;
}

/**
 * A request that was not applied, or whose outcome is unknown: the agent's error ack (`ack`
 * set), or a failure on the sender's side (`ack` null).
 */
export class ContextError extends ImaginexError {
  declare readonly code: ErrorCode;
  readonly requestId: string | null;
  readonly retryAfter: number | null;
  readonly ack: ErrorAck | null;

  constructor(code: ErrorCode, message: string, options: ContextErrorOptions = {}) {
    super(code, message, options);
    this.name = "ContextError";
    this.requestId = options.requestId ?? null;
    this.retryAfter = options.retryAfter ?? null;
    this.ack = options.ack ?? null;
  }

  /** The error for an error ack the agent sent. */
  static fromAck(ack: ErrorAck): ContextError {
    return new ContextError(ack.error, ack.message, {
      requestId: ack.id,
      retryAfter: ack.retry_after ?? null,
      ack,
    });
  }
}

/**
 * No ack came in time, after every attempt (`TIMEOUT`). Whether the agent applied the request is
 * unknown: sending it again with the same id is safe (the agent applies an id once).
 */
export class AckTimeoutError extends ContextError {
  readonly attempts: number;

  constructor(message: string, options: { requestId: string | null; attempts: number }) {
    super("TIMEOUT", message, { requestId: options.requestId, retryable: true });
    this.name = "AckTimeoutError";
    this.attempts = options.attempts;
  }
}

/**
 * Why a playout wait ran out: `pending` (the agent still has the speech queued or playing),
 * `lost` (the agent no longer has it: its end was sent and did not arrive), `unknown` (the agent
 * could not be asked).
 */
export type PlayoutWait = "pending" | "lost" | "unknown";

/**
 * The speech was accepted but did not start or finish in time (`TIMEOUT`). The client then asks
 * the agent (one `get_state`) whether it still has the speech, and says so in `why`.
 */
export class PlayoutTimeoutError extends ContextError {
  readonly accepted: SuccessAck | null;
  readonly why: PlayoutWait;

  constructor(message: string, options: { requestId: string | null; accepted?: SuccessAck | null; why?: PlayoutWait }) {
    super("TIMEOUT", message, { requestId: options.requestId, retryable: false });
    this.name = "PlayoutTimeoutError";
    this.accepted = options.accepted ?? null;
    this.why = options.why ?? "unknown";
  }
}

const FAILURE_SENTENCES: Record<string, string> = {
  not_started: "The speech did not start in time (start_within_s) and was cancelled.",
  tts_error: "The speech failed: the agent's TTS failed.",
  llm_error: "The speech failed: the agent's model failed to phrase it.",
  session_closed: "The speech did not play out: the agent's session closed first.",
  cancelled: "The speech was cancelled before it played out.",
  avatar_left: "The speech did not play out: the avatar playing it left the room.",
};

/**
 * v1.3: the speech was accepted but did not play (`SPEECH_FAILED`): the agent's `speech_failed`
 * event, whose `reason` says why (`not_started`, `tts_error`, `llm_error`, `session_closed`,
 * `cancelled`, `avatar_left`). Python: `SpeechFailedError`.
 */
export class SpeechFailedError extends ContextError {
  readonly event: SpeechFailedEvent;
  readonly reason: SpeechFailedEvent["reason"];
  readonly accepted: SuccessAck | null;

  constructor(event: SpeechFailedEvent, options: { accepted?: SuccessAck | null } = {}) {
    super("SPEECH_FAILED", FAILURE_SENTENCES[event.reason] ?? "The speech did not play.", {
      requestId: event.id,
      retryable: event.reason === "not_started",
    });
    this.name = "SpeechFailedError";
    this.event = event;
    this.reason = event.reason;
    this.accepted = options.accepted ?? null;
  }
}
