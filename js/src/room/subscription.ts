/**
 * Watching a call: `subscribe()` as an async iterator of typed events (Python:
 * sender/subscription.py). The sink is registered before the `subscribe` request goes out (over
 * RPC the ack races the events), takes only the agent's events of the kinds asked for, holds at
 * most `queueSize` (the oldest are dropped and counted in the next event's `dropped`), and ends
 * after `call_ended`. v1.3: it never hands out an event whose `seq` it already handed out (a
 * replay overlapping what arrived live); `lastSeq` is where to resume (`subscribe({ sinceSeq })`).
 */
import { ContextError } from "../errors.js";
import type { CallEndedEvent, Snapshot, SpeechEvent, SessionEvent, SuccessAck } from "../generated/wire.js";
import { eventKind, SESSION_EVENT_TYPES, type SessionEventType } from "../protocol.js";
import { given, type RequestInput } from "../requests.js";
import type { CallOptions } from "./options.js";

/** Everything a subscription may hand out: session events and (kind `speech`) speech events. */
export type SubscribedEvent = SessionEvent | SpeechEvent;

/** What a subscription gets whatever it named. */
const ALWAYS: ReadonlySet<string> = new Set(["call_ended", "events_lost", "snapshot"]);

/** Most events held while the caller is busy; beyond it the oldest are dropped. */
export const DEFAULT_EVENT_QUEUE_SIZE = 1_024;
/** How long closing a subscription waits for the `unsubscribe` ack. */
export const UNSUBSCRIBE_TIMEOUT_MS = 2_000;

export interface SubscribeOptions {
  events?: readonly SessionEventType[];
  interim?: boolean;
  toolArguments?: boolean;
  queueSize?: number;
  timeoutMs?: number;
  /**
   * v1.3, resume: the `seq` of the last event seen (an earlier subscription's `lastSeq`). The
   * agent replays what it still holds after it first (each `replay: true`), or sends
   * `events_lost` and a fresh `snapshot` when it no longer holds it all, then goes live.
   */
  sinceSeq?: number;
}

type Item = SubscribedEvent | ContextError | null; // null: the end

export class EventSink {
  private readonly queue: Item[] = [];
  private lost = 0;
  private wake: (() => void) | null = null;
  private finished = false;
  private readonly kinds: ReadonlySet<string>;
  /** The highest `seq` taken: an event numbered at or below it is a repeat. */
  lastSeq: number | null = null;

  constructor(
    readonly agent: string,
    private readonly size: number,
    kinds: readonly string[] = [],
  ) {
    this.kinds = new Set([...kinds, ...ALWAYS]);
  }

  put(event: SubscribedEvent): void {
    if (this.finished) return;
    if (this.kinds.size > ALWAYS.size && !this.kinds.has(eventKind(event.type))) return;
    const seq = event.seq;
    if (typeof seq === "number") {
      // events_lost starts afresh: it may come from another session of the agent
      if (event.type !== "events_lost" && this.lastSeq !== null && seq <= this.lastSeq) return;
      this.lastSeq = seq;
    }
    if (this.queue.length >= this.size) {
      this.queue.shift();
      this.lost += 1;
    }
    this.queue.push(event);
    this.finished = event.type === "call_ended"; // nothing comes after it
    this.notify();
  }

  /** No more events: end after what is queued (with `failure`: then throw it). */
  finish(failure?: ContextError): void {
    if (this.finished) return;
    this.finished = true;
    this.queue.push(failure ?? null);
    this.notify();
  }

  async get(): Promise<[Item, number]> {
    while (this.queue.length === 0) await new Promise<void>((resolve) => (this.wake = resolve));
    const item = this.queue.shift() as Item;
    const lost = this.lost;
    this.lost = 0;
    return [item, lost];
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}

/** What a subscription needs of its client. */
export interface SubscriptionHooks {
  unsubscribe(timeoutMs: number): Promise<unknown>;
  usable(): boolean;
  closed(events: SessionEvents): void;
}

/**
 * A live subscription to the agent's session events; iterate it with `for await`. It ends after
 * `call_ended` (handed out last); it throws `ContextError` `AGENT_NOT_FOUND` when the agent leaves
 * without ending the call, `LIVEKIT_UNAVAILABLE` when the room goes away or the client closes.
 * Leaving the loop early (or {@link close}) unsubscribes.
 */
export class SessionEvents implements AsyncIterableIterator<SubscribedEvent> {
  private droppedTotal = 0;
  private lastOut: number | null = null;
  private ended: CallEndedEvent | null = null;
  private agentGone = false;
  private done = false;
  private isClosed = false;
  unsubscribedElsewhere = false;

  constructor(
    /** The `subscribe` ack: `data.events` is what the agent sends (`call_ended` always). */
    readonly ack: SuccessAck,
    readonly sink: EventSink,
    private readonly hooks: SubscriptionHooks,
    private readonly sinceSeq: number | null = null,
  ) {}

  /** v1.3: where the call stood when the subscription began (the ack's snapshot). */
  get snapshot(): Snapshot | null {
    return this.ack.data.snapshot ?? null;
  }

  /** v1.3: how many events the agent replays first (`sinceSeq`), 0 without it. */
  get replayed(): number {
    return this.ack.data.replayed ?? 0;
  }

  /**
   * The `seq` to resume after (`subscribe({ sinceSeq })`): the last event handed out, else the
   * snapshot's, else the `sinceSeq` this subscription began from.
   */
  get lastSeq(): number | null {
    if (this.lastOut !== null) return this.lastOut;
    if (this.sinceSeq === null && this.snapshot !== null) return this.snapshot.seq;
    return this.sinceSeq;
  }

  /** The events the agent sends this subscriber. */
  get events(): SessionEventType[] {
    return [...(this.ack.data.events ?? [])];
  }

  /** Events lost so far: by the agent (this subscriber fell behind) and here. */
  get dropped(): number {
    return this.droppedTotal;
  }

  /** The `call_ended` event, once it has been handed out. */
  get callEnded(): CallEndedEvent | null {
    return this.ended;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<SubscribedEvent>> {
    if (this.ended !== null || this.done) return { done: true, value: undefined };
    const [item, lost] = await this.sink.get();
    if (item === null || item instanceof ContextError) this.done = true;
    if (item === null) return { done: true, value: undefined };
    if (item instanceof ContextError) {
      this.agentGone = item.code === "AGENT_NOT_FOUND";
      throw item;
    }
    const event = lost ? { ...item, dropped: (item.dropped ?? 0) + lost } : item;
    this.droppedTotal += event.dropped ?? 0;
    if (typeof event.seq === "number") this.lastOut = event.seq;
    if (event.type === "call_ended") this.ended = event;
    return { done: false, value: event };
  }

  async return(): Promise<IteratorResult<SubscribedEvent>> {
    await this.close();
    return { done: true, value: undefined };
  }

  /**
   * Stops: unsubscribes (unless the call ended or the agent left). Idempotent; a failed or
   * unanswered `unsubscribe` is not thrown (the agent also ends it when this participant leaves).
   */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    this.sink.finish();
    this.hooks.closed(this);
    if (this.ended !== null || this.agentGone || this.unsubscribedElsewhere || !this.hooks.usable()) return;
    try {
      await this.hooks.unsubscribe(UNSUBSCRIBE_TIMEOUT_MS);
    } catch {
      // best effort, as documented
    }
  }
}

/** What a client's subscriptions need of it. */
export interface ClientHooks {
  resolveAgent(): Promise<string>;
  call(request: RequestInput, options: { timeoutMs?: number }): Promise<SuccessAck>;
  /** Whether an `unsubscribe` can still be sent (the client open, the room connected). */
  usable(): boolean;
}

/**
 * A client's side of `subscribe` / `unsubscribe`: at most one open subscription, and the sinks
 * the room's events are routed to (a closing subscription's sink stays until it has closed).
 */
export class Subscriptions {
  private readonly sinks = new Set<EventSink>();
  private current: SessionEvents | null = null;
  private opening = false;

  constructor(private readonly client: ClientHooks) {}

  /** Resolves once the agent acknowledged the subscription. */
  async open(options: SubscribeOptions): Promise<SessionEvents> {
    const events = options.events ?? SESSION_EVENT_TYPES;
    if (events.length === 0) throw new Error("events must name at least one event");
    const queueSize = options.queueSize ?? DEFAULT_EVENT_QUEUE_SIZE;
    if (!(queueSize >= 1)) throw new Error("queueSize must be at least 1");
    const sinceSeq = options.sinceSeq ?? null;
    if (sinceSeq !== null && !(Number.isInteger(sinceSeq) && sinceSeq >= 0)) throw new Error("sinceSeq must be a whole number, not negative");
    if (this.current !== null || this.opening) {
      throw new Error("this client already has a subscription open; close it first");
    }
    this.opening = true;
    let sink: EventSink | null = null;
    let ack: SuccessAck;
    try {
      const agent = await this.client.resolveAgent();
      sink = new EventSink(agent, queueSize, events);
      if (sinceSeq !== null) sink.lastSeq = sinceSeq; // nothing at or before it is handed out again
      this.sinks.add(sink);
      ack = await this.client.call(
        {
          type: "subscribe",
          events: [...events],
          interim: options.interim ?? false,
          tool_arguments: options.toolArguments ?? false,
          ...given({ since_seq: sinceSeq }),
        },
        options,
      );
    } catch (error) {
      if (sink !== null) this.sinks.delete(sink);
      throw error;
    } finally {
      this.opening = false;
    }
    const subscription = new SessionEvents(ack, sink, {
      unsubscribe: (timeoutMs) => this.client.call({ type: "unsubscribe" }, { timeoutMs }),
      usable: () => this.client.usable(),
      closed: (which) => {
        this.sinks.delete(which.sink);
        if (this.current === which) this.current = null;
      },
    }, sinceSeq);
    this.current = subscription;
    return subscription;
  }

  /** Ends this sender's subscription at the agent; an open iteration ends too. */
  async unsubscribe(options: CallOptions): Promise<SuccessAck> {
    const ack = await this.client.call({ type: "unsubscribe", ...given({ id: options.id }) }, options);
    const open = this.current;
    if (open !== null) {
      open.unsubscribedElsewhere = true;
      open.sink.finish();
    }
    return ack;
  }

  /** Hands an event from `sender` to the subscriptions on that agent that asked for its kind. */
  put(event: SubscribedEvent, sender: string): void {
    for (const sink of this.sinks) if (sink.agent === sender) sink.put(event);
  }

  /** Ends the subscriptions on `agent` (every one when undefined) with `failure()`. */
  fail(failure: () => ContextError, agent?: string): void {
    for (const sink of this.sinks) if (agent === undefined || sink.agent === agent) sink.finish(failure());
  }
}
