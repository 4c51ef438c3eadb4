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
export {
  ContextClient,
  DEFAULT_AGENT_TIMEOUT_MS,
  DEFAULT_PLAYOUT_TIMEOUT_MS,
  DEFAULT_TIMEOUT_MS,
  FIRST_CONTACT_RESEND_MS,
  type AddContextOptions,
  type CallOptions,
  type ContextClientOptions,
  type SpeakOptions,
  type Speech,
  type SubscribeOptions,
  type Via,
} from "./client.js";
export { HANDLER_FAILED, RPC_FAILURES, rpcFailure, type RpcFailure } from "./rpc.js";
export {
  DEFAULT_EVENT_QUEUE_SIZE,
  SessionEvents,
  UNSUBSCRIBE_TIMEOUT_MS,
  type SubscribedEvent,
} from "./subscription.js";
