/**
 * The console's own routes (`/console/api/...`: sign-in, the calls list, take-over tokens) and
 * the gateway client bound to the session (`/console/api/v1/agent/...`, the REST API's routes
 * admitted by the session cookie and the CSRF token instead of an api-secret).
 *
 * The CSRF token lives in this object only (memory): never in storage, never in a URL. A
 * reloaded page gets it back from `GET /console/api/session`, which only this origin can read.
 */
import { GatewayClient, GatewayError } from "../../src/gateway/client.js";

export { GatewayClient, GatewayError };

export interface SessionInfo {
  tenant: string;
  /** The codes this tenant owns; null: every code. */
  agent_codes: string[] | null;
  csrf_token: string;
  expires_at: string;
  idle_timeout_s: number;
}

export interface CallInfo {
  room: string;
  agent_code: string;
  agent_identity: string;
  agent_state: string;
  /** Seconds since the epoch when the agent joined; null when not known. */
  started_at: number | null;
  users: string[];
  operators: number;
}

export interface TakeoverToken {
  url: string;
  token: string;
  identity: string;
  room: string;
}

const TIMEOUT_MS = 15_000;

export class ConsoleApi {
  private csrf = "";
  readonly base: string;
  readonly gateway: GatewayClient;

  constructor(pageUrl: string) {
    // the page is served at .../console: the API next to it, whatever prefix a proxy adds
    this.base = new URL("console/api/", new URL(".", pageUrl)).href;
    this.gateway = new GatewayClient({ baseUrl: this.base, csrfToken: () => this.csrf, retries: 1, timeoutMs: TIMEOUT_MS });
  }

  /** The current session, or null when signed out (or it ended). */
  async session(): Promise<SessionInfo | null> {
    try {
      return this.keep(await this.call<SessionInfo>("GET", "session"));
    } catch (error) {
      if (error instanceof GatewayError && error.status === 401) return null;
      throw error;
    }
  }

  async login(apiSecret: string): Promise<SessionInfo> {
    return this.keep(await this.call<SessionInfo>("POST", "login", { api_secret: apiSecret }));
  }

  async logout(): Promise<void> {
    try {
      await this.call("POST", "logout", {});
    } finally {
      this.csrf = "";
    }
  }

  async calls(signal?: AbortSignal): Promise<CallInfo[]> {
    return (await this.call<{ calls: CallInfo[] }>("GET", "calls", undefined, signal)).calls;
  }

  takeover(agentCode: string, roomId: string): Promise<TakeoverToken> {
    return this.call<TakeoverToken>("POST", "takeover", { agent_code: agentCode, room_id: roomId });
  }

  private keep(info: SessionInfo): SessionInfo {
    this.csrf = info.csrf_token;
    return info;
  }

  private async call<T>(method: "GET" | "POST", path: string, body?: object, signal?: AbortSignal): Promise<T> {
    const headers: Record<string, string> = { accept: "application/json" };
    if (method === "POST") {
      headers["content-type"] = "application/json";
      headers["x-csrf-token"] = this.csrf;
    }
    const timeout = AbortSignal.timeout(TIMEOUT_MS);
    let response: Response;
    try {
      response = await fetch(this.base + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "same-origin",
        cache: "no-store",
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
    } catch (error) {
      throw new GatewayError("GATEWAY_UNREACHABLE", "The gateway could not be reached.", { status: 0, retryable: true, cause: error });
    }
    const answer = (await response.json().catch(() => null)) as (T & { error?: string; message?: string }) | null;
    if (!response.ok) {
      throw new GatewayError(answer?.error ?? `HTTP_${response.status}`, answer?.message ?? `The gateway answered ${response.status}.`, {
        status: response.status,
        retryable: response.status >= 500,
      });
    }
    return answer as T;
  }
}
