/**
 * What a `ContextClient` and its requests take (Python: sender/client.py's keyword options), with
 * the defaults the client applies.
 */
import { DEFAULT_BACKOFF_MS, DEFAULT_RETRIES } from "../retry.js";

/** How requests reach the agent: `"rpc"` (`performRpc`) or `"data"` (data packets). */
export type Via = "rpc" | "data";

export const DEFAULT_TIMEOUT_MS = 5_000;
export const DEFAULT_AGENT_TIMEOUT_MS = 10_000;
export const DEFAULT_PLAYOUT_TIMEOUT_MS = 120_000;

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

/** What a client runs with: its `ContextClientOptions` with the defaults applied. */
export type ClientSettings = Required<
  Pick<ContextClientOptions, "via" | "timeoutMs" | "retries" | "backoffMs" | "agentTimeoutMs" | "playoutTimeoutMs">
>;

/** `config` with the defaults applied; throws on a value no client can run with. */
export function clientSettings(config: ContextClientOptions): ClientSettings {
  const via = config.via ?? "rpc";
  if (via !== "rpc" && via !== "data") throw new Error("via must be 'rpc' or 'data'");
  const settings = {
    via,
    timeoutMs: config.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    retries: config.retries ?? DEFAULT_RETRIES,
    backoffMs: config.backoffMs ?? DEFAULT_BACKOFF_MS,
    agentTimeoutMs: config.agentTimeoutMs ?? DEFAULT_AGENT_TIMEOUT_MS,
    playoutTimeoutMs: config.playoutTimeoutMs ?? DEFAULT_PLAYOUT_TIMEOUT_MS,
  };
  const { timeoutMs, agentTimeoutMs, playoutTimeoutMs, retries, backoffMs } = settings;
  if (!(timeoutMs > 0) || !(agentTimeoutMs >= 0) || !(playoutTimeoutMs > 0)) throw new Error("timeouts must be positive");
  if (!(retries >= 0) || !(backoffMs >= 0)) throw new Error("retries and backoff must not be negative");
  if (config.sender !== undefined && !config.secret) throw new Error("sender needs a secret to sign with");
  return settings;
}
