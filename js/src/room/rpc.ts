/**
 * The one table of what LiveKit's RPC failures mean to a sender (Python: _livekit/rpc.py),
 * decided by what the caller must do next: retry (timeout, agent still registering, LiveKit
 * could not send, agent gone for now), or give up (too large, no RPC on this server, the
 * agent's handler failed).
 */
import { ContextError, type ErrorCode } from "../errors.js";
import { RPC_METHOD } from "../protocol.js";

export interface RpcFailure {
  code: ErrorCode;
  retryable: boolean;
  /** One sentence; `{agent}` is the agent's identity, `{name}` the RPC error's name. */
  sentence: string;
}

const UNSUPPORTED = "RPC is not available with this LiveKit server or SDK ({name}).";

/** By LiveKit's `RpcError` code. */
export const RPC_FAILURES: Readonly<Record<number, RpcFailure>> = {
  1502: { code: "TIMEOUT", retryable: true, sentence: "Agent '{agent}' did not answer in time." },
  1501: { code: "TIMEOUT", retryable: true, sentence: "Agent '{agent}' did not acknowledge the message in time." },
  1400: {
    code: "NOT_READY",
    retryable: true,
    sentence: `Agent '{agent}' does not answer the '${RPC_METHOD}' RPC method; is ContextPlugin running there?`,
  },
  1505: {
    code: "LIVEKIT_UNAVAILABLE",
    retryable: true,
    sentence: "LiveKit could not send the message to agent '{agent}' ({name}).",
  },
  1401: {
    code: "AGENT_NOT_FOUND",
    retryable: true,
    sentence: "Agent '{agent}' is not in the room: it left before the message reached it.",
  },
  1503: { code: "AGENT_NOT_FOUND", retryable: true, sentence: "Agent '{agent}' left the room before it answered." },
  1402: { code: "PAYLOAD_TOO_LARGE", retryable: false, sentence: "The message is too large for an RPC request." },
  1403: { code: "LIVEKIT_UNAVAILABLE", retryable: false, sentence: UNSUPPORTED },
  1404: { code: "LIVEKIT_UNAVAILABLE", retryable: false, sentence: UNSUPPORTED },
};

/** Every other RPC error: the agent's handler raised, or answered too much. */
export const HANDLER_FAILED: RpcFailure = {
  code: "INTERNAL_ERROR",
  retryable: false,
  sentence: "Agent '{agent}' failed to handle the message ({name}).",
};

const NAMES: Record<number, string> = {
  1500: "APPLICATION_ERROR",
  1501: "CONNECTION_TIMEOUT",
  1502: "RESPONSE_TIMEOUT",
  1503: "RECIPIENT_DISCONNECTED",
  1504: "RESPONSE_PAYLOAD_TOO_LARGE",
  1505: "SEND_FAILED",
  1400: "UNSUPPORTED_METHOD",
  1401: "RECIPIENT_NOT_FOUND",
  1402: "REQUEST_PAYLOAD_TOO_LARGE",
  1403: "UNSUPPORTED_SERVER",
  1404: "UNSUPPORTED_VERSION",
};

/** The error a failed RPC to `agent` means; `error` is what `performRpc` rejected with. */
export function rpcFailure(error: unknown, agent: string, requestId: string | null = null): ContextError {
  const code = (error as { code?: unknown } | null)?.code;
  const failure = (typeof code === "number" && RPC_FAILURES[code]) || HANDLER_FAILED;
  const name = typeof code === "number" ? (NAMES[code] ?? String(code)) : String(code);
  return new ContextError(failure.code, failure.sentence.replace("{agent}", agent).replace("{name}", name), {
    requestId,
    retryable: failure.retryable,
    cause: error,
  });
}
