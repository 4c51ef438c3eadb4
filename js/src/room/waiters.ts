/** Requests waiting for their ack, and callers waiting for a speech's events (Python:
 * sender/waiters.py): matched against what one agent sends back, failed together when that agent
 * leaves or the room goes away. */
import { ContextError, SpeechFailedError } from "../errors.js";
import type { Ack, SpeechEvent, SuccessAck } from "../generated/wire.js";

/** How long, and how many, request ids and their speech events are remembered. */
export const EVENT_MEMORY_MS = 600_000;
export const EVENT_MEMORY_MAX = 4_096;
export const CLOSED_MESSAGE = "The client was closed before the answer arrived.";

export type MakeError = (requestId: string | null) => ContextError;

/** A bounded map whose entries expire: the oldest go first when it is full. */
export class Recent<V> {
  private readonly entries = new Map<string, { value: V; expires: number }>();

  constructor(
    private readonly ttlMs = EVENT_MEMORY_MS,
    private readonly max = EVENT_MEMORY_MAX,
  ) {}

  get(key: string): V | undefined {
    const entry = this.entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expires > Date.now()) return entry.value;
    this.entries.delete(key);
    return undefined;
  }

  set(key: string, value: V): void {
    this.entries.delete(key);
    this.entries.set(key, { value, expires: Date.now() + this.ttlMs });
    if (this.entries.size > this.max) this.entries.delete(this.entries.keys().next().value as string);
  }
}

export interface Pending {
  readonly requestId: string;
  agent: string | null;
  /** Set while an attempt waits for an ack on the data channel. */
  settle: ((ack: Ack) => void) | null;
  fail: ((error: ContextError) => void) | null;
}

export class PendingAcks {
  private readonly pending = new Map<string, Pending>();

  add(requestId: string): Pending {
    if (this.pending.has(requestId)) {
      throw new Error(`A request with id '${requestId}' is already waiting for its ack.`);
    }
    const entry: Pending = { requestId, agent: null, settle: null, fail: null };
    this.pending.set(requestId, entry);
    return entry;
  }

  remove(requestId: string): void {
    this.pending.delete(requestId);
  }

  /** Hands an ack from `sender` to the request waiting for it, if any. */
  onAck(ack: Ack, sender: string): void {
    let entry: Pending | undefined;
    if (ack.id !== null) {
      entry = this.pending.get(ack.id);
    } else if (!ack.success) {
      // refusals of messages the agent could not read carry no id: they are matched only when
      // exactly one request to that agent is waiting
      const waiting = [...this.pending.values()].filter((p) => p.agent === sender && p.settle !== null);
      entry = waiting.length === 1 ? waiting[0] : undefined;
    }
    if (entry === undefined || entry.agent !== sender) return;
    entry.settle?.(ack);
  }

  /** Fails the requests waiting on `agent` (every request when undefined). */
  fail(make: MakeError, agent?: string): void {
    for (const entry of this.pending.values()) {
      if (agent === undefined || entry.agent === agent) entry.fail?.(make(entry.requestId));
    }
  }
}

interface Waiter {
  type: SpeechEvent["type"];
  resolve(event: SpeechEvent): void;
  reject(error: ContextError): void;
}

/** Callers waiting for `speech_started` / `speech_finished`, and the recent events nobody waited
 * for yet (over RPC the ack and the events travel separately: an event may come first). */
export class Playouts {
  private readonly sentTo = new Recent<string>();
  private readonly speechIds = new Recent<string>();
  private readonly seen = new Recent<Partial<Record<SpeechEvent["type"], SpeechEvent>>>();
  private readonly waiters = new Map<string, Set<Waiter>>();

  /** Records that `requestId` went to `agent`: only that agent's events count for it. */
  sent(requestId: string, agent: string): void {
    this.sentTo.set(requestId, agent);
  }

  /** Records the speech an ack names, for a wait that runs out to ask the agent about. */
  accepted(ack: SuccessAck): void {
    if (ack.id !== null && ack.data.speech_id) this.speechIds.set(ack.id, ack.data.speech_id);
  }

  speechId(requestId: string): string | undefined {
    return this.speechIds.get(requestId);
  }

  onEvent(event: SpeechEvent, sender: string): void {
    if (event.id === null || this.sentTo.get(event.id) !== sender) return;
    this.seen.set(event.id, { ...this.seen.get(event.id), [event.type]: event });
    for (const waiter of this.waiters.get(event.id) ?? []) {
      if (waiter.type === event.type) waiter.resolve(event);
      // v1.3: a speech that did not play ends a wait for its start or its end, with the reason
      else if (event.type === "speech_failed") waiter.reject(new SpeechFailedError(event));
    }
  }

  /**
   * The event of `type` for `requestId`; rejects with `SpeechFailedError` when the speech ended
   * with `speech_failed`, with `onTimeout()` after `timeoutMs`.
   */
  wait<T extends SpeechEvent>(
    requestId: string,
    type: T["type"],
    timeoutMs: number,
    onTimeout: () => ContextError,
  ): Promise<T> {
    const seen = this.seen.get(requestId);
    const cached = seen?.[type];
    if (cached !== undefined) return Promise.resolve(cached as T);
    const failed = seen?.speech_failed;
    if (failed?.type === "speech_failed") return Promise.reject(new SpeechFailedError(failed));
    return new Promise<T>((resolve, reject) => {
      const waiters = this.waiters.get(requestId) ?? new Set<Waiter>();
      this.waiters.set(requestId, waiters);
      const done = (): void => {
        clearTimeout(timer);
        waiters.delete(waiter);
        if (waiters.size === 0) this.waiters.delete(requestId);
      };
      const waiter: Waiter = {
        type,
        resolve: (event) => (done(), resolve(event as T)),
        reject: (error) => (done(), reject(error)),
      };
      const timer = setTimeout(() => waiter.reject(onTimeout()), timeoutMs);
      waiters.add(waiter);
    });
  }

  /** Fails the waits on speeches sent to `agent` (every wait when undefined). */
  fail(make: MakeError, agent?: string): void {
    for (const [requestId, waiters] of [...this.waiters]) {
      if (agent !== undefined && this.sentTo.get(requestId) !== agent) continue;
      for (const waiter of [...waiters]) waiter.reject(make(requestId));
    }
  }
}

export function gone(agent: string, what: string, retryable: boolean): MakeError {
  return (requestId) =>
    new ContextError("AGENT_NOT_FOUND", `Agent '${agent}' left the room before ${what}.`, { requestId, retryable });
}

export function unavailable(message: string): MakeError {
  return (requestId) => new ContextError("LIVEKIT_UNAVAILABLE", message, { requestId, retryable: false });
}
