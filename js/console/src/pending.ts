/**
 * The pending speeches panel: what the agent has queued or playing (its count, from get-state),
 * and the speeches sent from this console, each with a Cancel button until it has played. A
 * speech that did not play stays listed a while with its reason.
 */
import type { AgentStateInfo, SpeechFailedEvent } from "../../src/generated/wire.js";
import type { Activity } from "./activity.js";
import { fill, h } from "./dom.js";

/** Speeches that did not play stay in the pending list this long, with their reason. */
const FAILED_SHOWN_MS = 30_000;

/** Why a speech did not play, for an operator. */
export const SPEECH_FAILED: Record<SpeechFailedEvent["reason"], string> = {
  not_started: "it did not start in time, so it was cancelled (it never plays late)",
  tts_error: "the TTS failed",
  llm_error: "the model failed to phrase a reply",
  session_closed: "the session closed first",
  cancelled: "cancelled before it played",
  avatar_left: "the avatar left the room",
};

interface OwnSpeech {
  text: string;
  element: HTMLLIElement;
  started: boolean;
}

export class PendingSpeeches {
  readonly element: HTMLElement;
  private readonly list = h("ul", { class: "pending-list", attrs: { "aria-label": "Pending speeches sent from this console" } });
  private readonly summary = h("p", { class: "panel-summary" });
  private readonly own = new Map<string, OwnSpeech>();
  private readonly failed: HTMLLIElement[] = [];
  private state: AgentStateInfo | null = null;

  constructor(private readonly activity: Activity) {
    this.element = h(
      "section",
      { class: "panel", attrs: { "aria-labelledby": "pending-title" } },
      h("h3", { id: "pending-title", text: "Pending speeches" }),
      this.summary,
      this.list,
    );
    this.render();
  }

  /** A speech this console sent (acknowledged or not yet); `cancel` asks the agent to drop it. */
  add(requestId: string, text: string, cancel: () => void): void {
    const button = h("button", {
      class: "small secondary",
      attrs: { type: "button", "aria-label": `Cancel the speech: ${text.slice(0, 60)}` },
      text: "Cancel",
      on: { click: cancel },
    });
    const element = h("li", { class: "pending-speech" }, h("p", { text }), button);
    this.own.set(requestId, { text, element, started: false });
    this.render();
  }

  /** A speech the agent refused: it will never play. */
  forget(requestId: string): void {
    this.own.delete(requestId);
    this.render();
  }

  /** A playout event for a speech: it started, or it is done. */
  played(requestId: string | null, done: boolean): void {
    const own = requestId ? this.own.get(requestId) : undefined;
    if (own && requestId) {
      own.started = true;
      if (done) this.own.delete(requestId);
      this.render();
    }
  }

  /** A speech_failed for a speech of this console: listed a while as not played, with why. */
  failedToPlay(event: SpeechFailedEvent, why: string): void {
    const own = event.id ? this.own.get(event.id) : undefined;
    if (!own || !event.id) return;
    this.own.delete(event.id);
    const element = h(
      "li",
      { class: "pending-speech failed", attrs: { "data-reason": event.reason } },
      h("p", { text: own.text }),
      h("span", { class: "tag", text: `did not play: ${event.reason.replace("_", " ")}`, attrs: { title: why } }),
    );
    this.failed.unshift(element);
    this.failed.splice(5);
    setTimeout(() => {
      const at = this.failed.indexOf(element);
      if (at >= 0) this.failed.splice(at, 1);
      this.render();
    }, FAILED_SHOWN_MS);
    this.render();
  }

  /** After lost events: the speeches the snapshot no longer lists (`pending`, by request id) ended meanwhile. */
  snapshot(pending: Set<string | null>): void {
    for (const [id, own] of this.own) {
      // acknowledged, and no longer queued or playing: it ended while the console was away
      if (!pending.has(id) && this.activity.find(id)?.outcome === "ok") {
        this.activity.find(id)?.note("■ ended while the console was away");
        this.own.delete(id);
        own.element.remove();
      }
    }
  }

  /** The agent's state, as get-state (or a snapshot) says it. */
  show(state: AgentStateInfo): void {
    this.state = state;
    if (!state.pending_speeches.length) {
      for (const [id, own] of this.own) if (own.started) this.own.delete(id);
    }
    this.render();
  }

  private render(): void {
    const pending = this.state?.pending_speeches_total ?? this.state?.pending_speeches.length ?? 0;
    this.summary.textContent = pending ? `${pending} queued or playing in the agent` : "Nothing queued or playing.";
    fill(this.list, ...[...this.own.values()].map((own) => own.element), ...this.failed);
  }
}
