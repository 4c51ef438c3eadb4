/**
 * Drive the agent through the HTTP gateway (`imaginex-context gateway`), from Node or any
 * runtime with `fetch`:
 *
 * ```ts
 * import { GatewayClient } from "@imaginex/context-client/gateway";
 * const gateway = new GatewayClient({ baseUrl: "http://127.0.0.1:8089", apiSecret });
 * await gateway.speak("A12345678", { message: "Your order has shipped!" });
 * ```
 */
export * from "../index.js";
export {
  DEFAULT_GATEWAY_TIMEOUT_MS,
  GatewayClient,
  GatewayError,
  type EventsOptions,
  type GatewayCallOptions,
  type GatewayClientOptions,
  type StreamedEvent,
} from "./client.js";
