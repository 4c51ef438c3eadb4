/**
 * `@imaginex/context-client`: drive a running LiveKit voice agent that runs `ContextPlugin`.
 *
 * This entry holds what every side shares and needs nothing at run time: the wire types
 * (generated from the Python side's JSON Schemas), the error family, request validation and
 * signing. `@imaginex/context-client/room` drives the agent from a LiveKit room
 * (`livekit-client`); `@imaginex/context-client/gateway` through the HTTP gateway (Node, or any
 * `fetch`).
 */
export * from "./protocol.js";
export {
  AckTimeoutError,
  ContextError,
  ERROR_CODES,
  ImaginexError,
  PlayoutTimeoutError,
  RETRYABLE_CODES,
  SpeechFailedError,
  type ContextErrorOptions,
  type PlayoutWait,
} from "./errors.js";
export { checkSize, hasVisibleText, prepareRequest, requestIdOf, requestProblem, type RequestInput } from "./requests.js";
export { DEFAULT_BACKOFF_MS, DEFAULT_RETRIES, MAX_BACKOFF_MS, MAX_RETRY_AFTER_S, newRequestId, retryDelayMs } from "./retry.js";
export {
  REPLY_SIGNATURE_PREFIX,
  SENDER_SIGNATURE_PREFIX,
  Signer,
  computeSignature,
  signRequest,
  signedMessage,
  type SignOptions,
} from "./signing.js";
