/**
 * Drive the agent from a LiveKit room (`livekit-client`): a web page, an operator console.
 *
 * ```ts
 * import { ContextClient } from "@imaginex/context-client/room";
 * const client = new ContextClient(room, { agentCode: "A12345678" });
 * const speech = await client.speak("Your order has shipped!");
 * const finished = await speech.finished();
 * ```
 */
export * from "../index.js";
export { AGENT_KIND, chooseAgent, type Candidate } from "./agents.js";
export { ContextClient, FIRST_CONTACT_RESEND_MS } from "./client.js";
export {
  DEFAULT_AGENT_TIMEOUT_MS,
  DEFAULT_PLAYOUT_TIMEOUT_MS,
  DEFAULT_TIMEOUT_MS,
  type AddContextOptions,
  type CallOptions,
  type ContextClientOptions,
  type SpeakOptions,
  type Via,
} from "./options.js";
export { type Speech } from "./playout.js";
export { HANDLER_FAILED, RPC_FAILURES, rpcFailure, type RpcFailure } from "./rpc.js";
export {
  DEFAULT_EVENT_QUEUE_SIZE,
  SessionEvents,
  UNSUBSCRIBE_TIMEOUT_MS,
  type SubscribeOptions,
  type SubscribedEvent,
} from "./subscription.js";
