/**
 * `GatewayClient`: the HTTP gateway's REST API from Node (or any runtime with `fetch`), in the
 * shape of the platform's (`POST /v1/agent/{code}/speak`, ...): an `Idempotency-Key` is set for
 * you and reused on every retry, so a retry is applied once; 408, 409 `REQUEST_IN_PROGRESS`,
 * 429, 503 and 504 are retried after at least their `Retry-After`; the events stream
 * (`GET .../events`) is an async iterator.
 *
 * Two ways to authenticate: an `apiSecret` (a backend), or, in a page the gateway itself
 * serves (its operator console), the session cookie the browser holds plus the `csrfToken`
 * that came with it: the secret then never reaches the page's script after sign-in.
 */
import { ImaginexError } from "../errors.js";
import type {
  AddContextBody,
  AddContextResponse,
  CancelBody,
  ControlResponse,
  EndCallBody,
  ErrorResponse,
  GetHistoryBody,
  GetStateBody,
  HealthResponse,
  InterruptBody,
  RemoveContextBody,
  ResetInstructionsBody,
  SessionEvent,
  SpeechEvent,
  SpeakBody,
  SpeakResponse,
  UpdateInstructionsBody,
  UpdateIOBody,
  UserMessageBody,
} from "../generated/wire.js";
import type { SessionEventType } from "../protocol.js";
import { DEFAULT_BACKOFF_MS, DEFAULT_RETRIES, newRequestId, retryDelayMs, sleep } from "../retry.js";

export const DEFAULT_GATEWAY_TIMEOUT_MS = 30_000;
/** Statuses a later attempt (with the same Idempotency-Key) may not get. */
const RETRYABLE_STATUSES: ReadonlySet<number> = new Set([408, 429, 503, 504]);

export interface GatewayClientOptions {
  /**
   * The gateway's URL, e.g. `http://127.0.0.1:8089`; in a page, it may be relative to the
   * page (`/console/api`).
   */
  baseUrl: string;
  /** The `api-secret` header. Give this or `csrfToken`. */
  apiSecret?: string;
  /**
   * Session mode, for a page the gateway serves: no `api-secret`; the browser's session cookie
   * goes with every request (same origin only) and this token in the `X-CSRF-Token` header of
   * every POST. A function is asked before each request (the token may change on sign-in).
   */
  csrfToken?: string | (() => string);
  /** Milliseconds each attempt may take. Default 30000. */
  timeoutMs?: number;
  /** Attempts after the first. Default 2. */
  retries?: number;
  /** First delay between attempts (doubling, jittered, at least `Retry-After`). Default 250. */
  backoffMs?: number;
  /** The `fetch` to use. Default: the global one. */
  fetch?: typeof fetch;
}

export interface GatewayCallOptions {
  /** The message id and Idempotency-Key (1 to 128 characters). Default: 32 random hex digits. */
  idempotencyKey?: string;
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What the events stream yields: session events and (kind `speech`) speech events. */
export type StreamedEvent = SessionEvent | SpeechEvent;

export interface EventsOptions {
  /** The room whose events to stream (required by the gateway). */
  roomId: string;
  /** Which events. Default: all. */
  events?: readonly SessionEventType[];
  interim?: boolean;
  toolArguments?: boolean;
  /** Also `speech_started` / `speech_finished` of the speeches sent through the gateway. */
  playout?: boolean;
  /** Called once the gateway has accepted the stream (before any event: an idle call sends none), and again after each resume. */
  onOpen?: () => void;
  signal?: AbortSignal;
  /**
   * v1.3: resume after this event's `seq` (the last one seen): sent as `Last-Event-ID`, so what
   * the agent sent since comes first (marked `replay`), or `events_lost` and a fresh `snapshot`.
   */
  lastEventId?: number;
  /**
   * v1.3: when the stream breaks off before `call_ended` (a network blip, a replica going away),
   * open it again with `Last-Event-ID` (on whatever replica answers): nothing missing, nothing
   * twice. Up to this many times in a row without an event between, 0.5 s apart and doubling;
   * then the stream throws `GATEWAY_UNREACHABLE` (`retryable`: call again with `lastEventId`).
   * Default 0: no resuming.
   */
  resumeAttempts?: number;
}

/**
 * A refusal or failure of the gateway: `status` (0 when no answer came), `code` (the body's
 * `error`, or `GATEWAY_UNREACHABLE` / `TIMEOUT`), `retryAfter` seconds, the `Idempotency-Key`
 * sent (`requestId`: retrying with it is safe) and the error `body` as answered.
 */
export class GatewayError extends ImaginexError {
  readonly status: number;
  readonly requestId: string | null;
  readonly retryAfter: number | null;
  readonly body: ErrorResponse | null;

  constructor(
    code: string,
    message: string,
    options: { status: number; requestId?: string | null; retryAfter?: number | null; body?: ErrorResponse | null; retryable: boolean; cause?: unknown },
  ) {
    super(code, message, options);
    this.name = "GatewayError";
    this.status = options.status;
    this.requestId = options.requestId ?? null;
    this.retryAfter = options.retryAfter ?? null;
    this.body = options.body ?? null;
  }
}

export class GatewayClient {
  private readonly base: string;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly fetch: typeof fetch;

  private readonly apiSecret: string | null;
  private readonly csrfToken: (() => string) | null;
  private readonly credentials: RequestCredentials | undefined;

  constructor(options: GatewayClientOptions) {
    const { apiSecret, csrfToken } = options;
    if (!apiSecret === (csrfToken === undefined)) throw new Error("give apiSecret or csrfToken (one of them)");
    this.apiSecret = apiSecret || null;
    this.csrfToken = csrfToken === undefined ? null : typeof csrfToken === "function" ? csrfToken : () => csrfToken;
    // session mode: the cookie goes with same-origin requests only
    this.credentials = this.csrfToken ? "same-origin" : undefined;
    const page = (globalThis as { location?: { href: string } }).location?.href;
    this.base = new URL(options.baseUrl, page).href.replace(/\/+$/, "");
    this.timeoutMs = options.timeoutMs ?? DEFAULT_GATEWAY_TIMEOUT_MS;
    this.retries = options.retries ?? DEFAULT_RETRIES;
    this.backoffMs = options.backoffMs ?? DEFAULT_BACKOFF_MS;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    if (!(this.timeoutMs > 0) || !(this.retries >= 0) || !(this.backoffMs >= 0)) throw new Error("timeouts must be positive, retries and backoff not negative");
  }

  /** `POST /v1/agent/{code}/speak`: the agent says `message` now, in every room it is live in (or `room_id`). */
  speak(agentCode: string, body: SpeakBody, options?: GatewayCallOptions): Promise<SpeakResponse> {
    return this.post(agentCode, "speak", body, options);
  }

  /** `POST /v1/agent/{code}/add-context`: background knowledge (or, with `type: "speak"`, spoken). */
  addContext(agentCode: string, body: AddContextBody, options?: GatewayCallOptions): Promise<AddContextResponse> {
    return this.post(agentCode, "add-context", body, options);
  }

  endCall(agentCode: string, body: EndCallBody = {}, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "end-call", body, options);
  }

  interrupt(agentCode: string, body: InterruptBody = {}, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "interrupt", body, options);
  }

  cancel(agentCode: string, body: CancelBody, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "cancel", body, options);
  }

  updateIO(agentCode: string, body: UpdateIOBody, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "update-io", body, options);
  }

  updateInstructions(agentCode: string, body: UpdateInstructionsBody, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "update-instructions", body, options);
  }

  resetInstructions(agentCode: string, body: ResetInstructionsBody = {}, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "reset-instructions", body, options);
  }

  userMessage(agentCode: string, body: UserMessageBody, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "user-message", body, options);
  }

  getHistory(agentCode: string, body: GetHistoryBody = {}, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "get-history", body, options);
  }

  /** `POST .../remove-context`: the entry added under `key` leaves the agent's context. */
  removeContext(agentCode: string, body: RemoveContextBody, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "remove-context", body, options);
  }

  /** `POST .../get-state`: each room's agent and user state, context entries, pending speeches, I/O switches. */
  getState(agentCode: string, body: GetStateBody = {}, options?: GatewayCallOptions): Promise<ControlResponse> {
    return this.post(agentCode, "get-state", body, options);
  }

  /** `GET /healthz`. */
  async health(options: { signal?: AbortSignal } = {}): Promise<HealthResponse> {
    const response = await this.fetch(`${this.base}/healthz`, { signal: options.signal });
    if (!response.ok) throw await refusal(response, null);
    return (await response.json()) as HealthResponse;
  }

  /**
   * `GET /v1/agent/{code}/events?room_id=...`: the room's live session events, until
   * `call_ended` (yielded last), the agent leaving or the stream closing. Leave the loop (or
   * abort `signal`) to stop. v1.3: every event carries its `seq`; `lastEventId` resumes after
   * one, and `resumeAttempts` resumes by itself when the connection breaks off (with no gap and
   * nothing twice: an event whose `seq` was already yielded is never yielded again).
   */
  async *events(agentCode: string, options: EventsOptions): AsyncGenerator<StreamedEvent, void, undefined> {
    const url = new URL(`${this.base}/v1/agent/${encodeURIComponent(agentCode)}/events`);
    url.searchParams.set("room_id", options.roomId);
    if (options.events) url.searchParams.set("events", options.events.join(","));
    if (options.interim) url.searchParams.set("interim", "true");
    if (options.toolArguments) url.searchParams.set("tool_arguments", "true");
    if (options.playout) url.searchParams.set("playout", "true");
    let last = options.lastEventId ?? null;
    const attempts = options.resumeAttempts ?? 0;
    let lastError: unknown = null;
    for (let failures = 0; ; ) {
      let ended = false;
      let progressed = false;
      try {
        for await (const event of this.streamOnce(url, last, options)) {
          progressed = true;
          if (typeof event.seq === "number") {
            if (last !== null && event.seq <= last && event.type !== "events_lost") continue; // a repeat
            last = event.seq;
          }
          yield event;
          if (event.type === "call_ended") {
            ended = true;
            return;
          }
        }
        if (attempts === 0) return; // the stream ended: the agent left, or the room went
      } catch (error) {
        // a refusal (an HTTP answer) is final; a broken connection is worth resuming
        if (error instanceof GatewayError && error.status !== 0) throw error;
        if (options.signal?.aborted || attempts === 0) throw error;
        lastError = error;
      }
      if (ended) return;
      failures = progressed ? 1 : failures + 1;
      if (failures > attempts) {
        // given up: never a quiet end, which would read as the call being over
        throw new GatewayError(
          "GATEWAY_UNREACHABLE",
          `The events stream broke off ${failures} times in a row before call_ended; resuming was given up.`,
          { status: 0, retryable: true, cause: lastError },
        );
      }
      await sleep(500 * 2 ** (failures - 1));
    }
  }

  private async *streamOnce(url: URL, lastEventId: number | null, options: EventsOptions): AsyncGenerator<StreamedEvent, void, undefined> {
    const headers: Record<string, string> = { ...this.authHeaders(false), accept: "text/event-stream" };
    if (lastEventId !== null) headers["Last-Event-ID"] = String(lastEventId);
    let response: Response;
    try {
      response = await this.fetch(url, { headers, credentials: this.credentials, signal: options.signal });
    } catch (error) {
      throw unreachable(error, null);
    }
    if (!response.ok || response.body === null) throw await refusal(response, null);
    options.onOpen?.();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      let buffer = "";
      let data: string[] = [];
      for (;;) {
        let chunk: ReadableStreamReadResult<string>;
        try {
          chunk = await reader.read();
        } catch (error) {
          throw unreachable(error, null);
        }
        const { value, done } = chunk;
        if (done) return;
        buffer += value;
        let newline: number;
        while ((newline = buffer.search(/\r\n|\r|\n/)) !== -1) {
          if (newline === buffer.length - 1 && buffer.endsWith("\r")) break; // "\r\n" split in two
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
          if (line === "") {
            // a blank line ends an event; comments (": heartbeat") and other fields (id: the
            // seq, also in the data) are skipped
            if (data.length) {
              const event = JSON.parse(data.join("\n")) as StreamedEvent;
              data = [];
              yield event;
            }
          } else if (line.startsWith("data:")) {
            data.push(line.slice(line[5] === " " ? 6 : 5));
          }
        }
      }
    } finally {
      await reader.cancel().catch(() => {});
    }
  }

  /** The `api-secret`, or in session mode the CSRF token for a request that changes something. */
  private authHeaders(changing: boolean): Record<string, string> {
    if (this.apiSecret !== null) return { "api-secret": this.apiSecret };
    return changing && this.csrfToken ? { "x-csrf-token": this.csrfToken() } : {};
  }

  private async post<T>(agentCode: string, endpoint: string, body: object, options: GatewayCallOptions = {}): Promise<T> {
    const key = options.idempotencyKey ?? newRequestId();
    const url = `${this.base}/v1/agent/${encodeURIComponent(agentCode)}/${endpoint}`;
    const payload = JSON.stringify(body);
    for (let attempt = 0; ; attempt++) {
      const timeout = AbortSignal.timeout(options.timeoutMs ?? this.timeoutMs);
      const signal = options.signal ? anySignal(options.signal, timeout) : timeout;
      const headers = { ...this.authHeaders(true), "content-type": "application/json", "idempotency-key": key };
      let failure: GatewayError;
      try {
        const response = await this.fetch(url, { method: "POST", headers, body: payload, credentials: this.credentials, signal });
        if (response.ok) return (await response.json()) as T;
        failure = await refusal(response, key);
      } catch (error) {
        if (options.signal?.aborted) throw error;
        failure = error instanceof GatewayError ? error : unreachable(error, key);
      }
      if (!failure.retryable || attempt >= this.retries) throw failure;
      await sleep(retryDelayMs(attempt, this.backoffMs, failure.retryAfter), options.signal);
    }
  }
}

function anySignal(...signals: AbortSignal[]): AbortSignal {
  const any = (AbortSignal as { any?: (signals: AbortSignal[]) => AbortSignal }).any;
  if (any) return any(signals);
  const controller = new AbortController();
  for (const signal of signals) signal.addEventListener("abort", () => controller.abort(signal.reason), { once: true });
  return controller.signal;
}

async function refusal(response: Response, requestId: string | null): Promise<GatewayError> {
  let body: ErrorResponse | null = null;
  try {
    body = (await response.json()) as ErrorResponse;
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const code = body?.error ?? `HTTP_${response.status}`;
  const retryable =
    RETRYABLE_STATUSES.has(response.status) || (response.status === 409 && code === "REQUEST_IN_PROGRESS");
  return new GatewayError(code, body?.message ?? `The gateway answered ${response.status}.`, {
    status: response.status,
    requestId,
    retryAfter: retryAfter(response.headers.get("retry-after")),
    body,
    retryable,
  });
}

function unreachable(error: unknown, requestId: string | null): GatewayError {
  const timedOut = (error as { name?: string } | null)?.name === "TimeoutError";
  return new GatewayError(
    timedOut ? "TIMEOUT" : "GATEWAY_UNREACHABLE",
    timedOut ? "The gateway did not answer in time." : "The gateway could not be reached.",
    { status: 0, requestId, retryable: true, cause: error },
  );
}

/** `Retry-After` in seconds: a number of seconds or an HTTP date. */
function retryAfter(header: string | null): number | null {
  if (header === null) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(header);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}
