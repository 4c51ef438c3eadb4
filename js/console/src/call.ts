/**
 * One call, live: its transcript, the agent's and the user's state, tool calls, the context
 * entries the agent holds, the pending speeches, every control with its answer and playout,
 * take-over and hand-back, end call.
 *
 * The transcript is the conversation's items (user and agent), each once by its item id: the
 * newest are read on opening (get-history), the rest come from the events stream
 * (`conversation_item`, and interim user text as a live line). State and context are read
 * (get-state) on opening, after each control and every few seconds.
 *
 * v1.3: a broken events stream is opened again with the last `seq` seen (`Last-Event-ID`), so
 * the gateway sends what was missed first; an event whose `seq` was already drawn is skipped.
 * When the agent no longer holds what was missed, `events_lost` says so (a visible note) and
 * the `snapshot` after it rebuilds the view. `context_used` marks an entry with the reply that
 * carried it; `context_dropped` takes an entry away with its reason; `speech_failed` says why a
 * speech did not play.
 *
 * This module is the view's wiring (its header, controls, events stream and state polling); the
 * transcript (transcript.ts), the context panel (context-panel.ts) and the pending speeches
 * (pending.ts) are drawn by their own modules.
 */
import type { AgentStateInfo, HistoryItem, IOState, SessionEvent, SnapshotEvent, SpeechEvent, SpeechFailedEvent } from "../../src/generated/wire.js";
import { Activity } from "./activity.js";
import { type CallInfo, type ConsoleApi, GatewayError } from "./api.js";
import { ContextPanel } from "./context-panel.js";
import { type CallTarget, contextForm, instructionsForm, send, speakForm, userMessageForm } from "./controls.js";
import { checkbox, duration, h } from "./dom.js";
import { PendingSpeeches, SPEECH_FAILED } from "./pending.js";
import { tabs } from "./tabs.js";
import { Takeover } from "./takeover.js";
import { Transcript } from "./transcript.js";

const STATE_EVERY_MS = 5_000;
const HISTORY_LIMIT = 100;
const RECONNECT_MS = [250, 500, 1_000, 2_000, 5_000];

type StreamEvent = SessionEvent | SpeechEvent;

export class CallView {
  readonly element: HTMLElement;
  private readonly abort = new AbortController();
  private readonly activity = new Activity();
  private readonly target: CallTarget;
  private readonly transcript = new Transcript();
  private readonly title: HTMLHeadingElement;
  private readonly meta = h("p", { class: "call-meta" });
  private readonly agentPill = pill("Agent");
  private readonly userPill = pill("User");
  private readonly streamPill = pill("Stream");
  private readonly voiceButton: HTMLButtonElement;
  private readonly listenButton: HTMLButtonElement;
  private readonly takeoverButton: HTMLButtonElement;
  private readonly endButton: HTMLButtonElement;
  private readonly banner: HTMLElement;
  private readonly meter = h("meter", { attrs: { min: 0, max: 1, value: 0, "aria-label": "Your microphone level" } });
  private readonly tellAgent = checkbox("Tell the agent a human spoke", true);
  private readonly endDialog: HTMLDialogElement;
  private readonly contextPanel = new ContextPanel(this.activity, (key) => void this.removeContext(key));
  private readonly pending = new PendingSpeeches(this.activity);
  /** The `seq` of the newest event drawn: the stream resumes after it; null before any (or from an agent older than v1.3). */
  private lastSeq: number | null = null;
  private state: AgentStateInfo | null = null;
  private io: IOState = { agent_audio: true, user_audio: true, transcription: true };
  private takeover: Takeover | null = null;
  private stateTimer: ReturnType<typeof setInterval> | undefined;
  private tick: ReturnType<typeof setInterval> | undefined;
  private stateQueued = false;
  private misses = 0;
  private ended = false;

  constructor(
    private readonly api: ConsoleApi,
    private call: CallInfo,
    private readonly onUnauthorized: () => void,
  ) {
    const target: CallTarget = {
      gateway: api.gateway,
      agentCode: call.agent_code,
      room: call.room,
      activity: this.activity,
      changed: () => this.refreshStateSoon(),
      unauthorized: (error) => this.checkUnauthorized(error),
    };
    this.target = target;
    this.title = h("h2", { id: "call-title", text: call.room, attrs: { tabindex: -1 } });
    this.voiceButton = toggle("Mute the agent", () => this.setIO("agent_audio"));
    this.listenButton = toggle("Stop it listening", () => this.setIO("user_audio"));
    this.takeoverButton = h("button", { class: "accent", attrs: { type: "button" }, text: "Take over", on: { click: () => void this.toggleTakeover() } });
    this.endButton = h("button", { class: "danger", attrs: { type: "button" }, text: "End call…", on: { click: () => this.endDialog.showModal() } });
    const interrupt = h("button", {
      class: "secondary",
      attrs: { type: "button" },
      text: "Interrupt",
      on: { click: () => void send(target, "Interrupt", null, (id) => target.gateway.interrupt(call.agent_code, { room_id: call.room, force: true }, { idempotencyKey: id })) },
    });
    this.banner = h(
      "div",
      { class: "takeover-banner", attrs: { role: "status", hidden: true } },
      h("span", { class: "live-dot", attrs: { "aria-hidden": "true" } }),
      h("p", {}, h("strong", { text: "You are live on this call." }), " The agent is muted and not listening; the caller hears you."),
      h("label", { class: "meter-label" }, "Mic", this.meter),
      this.tellAgent[0],
      h("button", { class: "primary", attrs: { type: "button" }, text: "Hand back to the agent", on: { click: () => void this.toggleTakeover() } }),
    );
    this.endDialog = this.buildEndDialog();
    const speak = speakForm(
      target,
      (id, text) => this.addOwnSpeech(id, text),
      (id) => this.pending.forget(id),
    );
    const context = contextForm(target, (key, text, requestId) => {
      this.contextPanel.remember(key ?? requestId, text);
    });
    this.element = h(
      "section",
      { class: "call", attrs: { "aria-labelledby": "call-title" } },
      h(
        "header",
        { class: "call-head" },
        h("div", { class: "call-id" }, this.title, this.meta),
        h("div", { class: "pills", attrs: { "aria-label": "State" } }, this.agentPill.element, this.userPill.element, this.streamPill.element),
        h("div", { class: "call-actions", attrs: { role: "group", "aria-label": "Call actions" } }, interrupt, this.voiceButton, this.listenButton, this.takeoverButton, this.endButton),
      ),
      this.banner,
      h(
        "div",
        { class: "call-body" },
        h(
          "div",
          { class: "call-main" },
          h("section", { class: "panel transcript", attrs: { "aria-labelledby": "transcript-title" } }, h("h3", { id: "transcript-title", text: "Transcript" }), this.transcript.element),
          h(
            "section",
            { class: "panel controls", attrs: { "aria-labelledby": "controls-title" } },
            h("h3", { id: "controls-title", class: "visually-hidden", text: "Controls" }),
            tabs("Controls", [
              ["Speak", speak],
              ["Context", context],
              ["Instructions", instructionsForm(target)],
              ["As the user", userMessageForm(target, () => void this.loadHistory())],
            ]),
          ),
        ),
        h(
          "aside",
          { class: "call-side" },
          this.contextPanel.element,
          this.pending.element,
          h("section", { class: "panel activity", attrs: { "aria-labelledby": "activity-title" } }, h("h3", { id: "activity-title", text: "Activity" }), this.activity.element),
        ),
      ),
      this.endDialog,
    );
    this.update(call);
  }

  /** Start following the call: its history and state, then its events. */
  start(): void {
    this.tick = setInterval(() => this.renderMeta(), 1_000);
    this.stateTimer = setInterval(() => void this.refreshState(), STATE_EVERY_MS);
    void this.refreshState();
    void this.follow();
  }

  /** Stop following (another call was opened, or the operator signed out); hands back a take-over. */
  async stop(): Promise<void> {
    this.abort.abort();
    clearInterval(this.stateTimer);
    clearInterval(this.tick);
    if (this.takeover) {
      const takeover = this.takeover;
      this.takeover = null;
      await takeover.handBack(this.tellAgent[1].checked);
    }
  }

  focus(): void {
    this.title.focus();
  }

  get room(): string {
    return this.call.room;
  }

  /** The calls list's newer view of this call. */
  update(call: CallInfo): void {
    this.call = call;
    this.misses = 0;
    if (!this.state) this.agentPill.set(call.agent_state);
    this.renderMeta();
  }

  /**
   * The calls list no longer shows this call. Ended only when two lists in a row miss it: one
   * listing can miss an agent that is reconnecting.
   */
  missing(): void {
    this.misses += 1;
    if (this.misses >= 2) this.markEnded("the call is no longer live");
  }

  // ------------------------------------------------------------------ the events stream

  private async follow(): Promise<void> {
    let failures = 0;
    let first = true;
    while (!this.abort.signal.aborted && !this.ended) {
      try {
        // an agent older than v1.3 sends no seq to resume after: read what was said meanwhile
        if (!first && this.lastSeq === null) await this.loadHistory();
        first = false;
        this.streamPill.set("connecting");
        const resumedAfter = this.lastSeq;
        const opened = () => {
          if (failures > 0 && resumedAfter !== null) this.activity.notice(`The events stream is back: resumed after event ${resumedAfter}`);
          failures = 0;
          this.streamPill.set("live");
        };
        const events = this.api.gateway.events(this.call.agent_code, {
          roomId: this.call.room,
          interim: true,
          playout: true,
          onOpen: opened,
          signal: this.abort.signal,
          ...(resumedAfter === null ? {} : { lastEventId: resumedAfter }),
        });
        for await (const event of events) this.onEvent(event as StreamEvent);
        if (!this.ended) this.markEnded("the agent left the room");
        return;
      } catch (error) {
        if (this.abort.signal.aborted) return;
        if (this.checkUnauthorized(error)) return;
        if (error instanceof GatewayError && error.status === 404) {
          this.markEnded("the agent is no longer in this room");
          return;
        }
        this.streamPill.set("reconnecting");
        if (failures === 0) this.activity.notice("The events stream was cut; reconnecting", "error");
        const wait = RECONNECT_MS[Math.min(failures, RECONNECT_MS.length - 1)]!;
        failures += 1;
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  }

  private onEvent(event: StreamEvent): void {
    if (event.type === "events_lost") {
      this.onEventsLost(event.from_seq, event.to_seq, event.timestamp);
      return;
    }
    if (event.type === "snapshot") {
      this.onSnapshot(event);
      return;
    }
    if (typeof event.seq === "number") {
      if (this.lastSeq !== null && event.seq <= this.lastSeq) return; // drawn already: never twice
      this.lastSeq = event.seq;
      this.element.dataset["seq"] = String(event.seq);
    }
    if (event.dropped) {
      // the console read too slowly and the gateway's buffer moved on: read what it missed
      this.activity.notice(`${event.dropped} events were lost (the console fell behind); reading the history again`, "error");
      void this.loadHistory();
      this.refreshStateSoon();
    }
    switch (event.type) {
      case "user_transcript":
        if (event.final) this.transcript.showInterim(event.text, event.timestamp, true);
        else this.transcript.showInterim(event.text, event.timestamp, false);
        break;
      case "conversation_item":
        if (event.item_type === "agent_handoff") this.transcript.add(event.item_id, "system", `Handed off to ${event.new_agent ?? "another agent"}`, event.timestamp);
        else if (event.role === "user" || event.role === "assistant") {
          if (event.role === "user") this.transcript.clearInterim();
          this.transcript.add(event.item_id, event.role, event.text ?? "", event.timestamp, event.interrupted ?? false);
        }
        this.refreshStateSoon();
        break;
      case "tool_call":
        this.transcript.add(`tool-${event.call_id}-${event.status}`, "tool", `${event.name} ${event.status === "completed" ? "completed" : "failed"}`, event.timestamp);
        break;
      case "agent_state":
        this.agentPill.set(event.new_state);
        break;
      case "user_state":
        this.userPill.set(event.new_state);
        break;
      case "speech_started":
        this.onPlayout(event.id, "▶ started playing", false);
        break;
      case "speech_finished": {
        const how = event.cancelled ? "■ cancelled" : event.interrupted ? "■ cut off" : event.failed ? "■ failed" : "■ finished";
        const played = event.played_s === undefined ? "" : ` after ${event.played_s.toFixed(1)} s`;
        this.onPlayout(event.id, `${how}${played}`, true);
        break;
      }
      case "speech_failed":
        this.onSpeechFailed(event);
        break;
      case "context_used":
        this.contextPanel.onUsed(event);
        break;
      case "context_dropped":
        this.contextPanel.onDropped(event);
        this.refreshStateSoon();
        break;
      case "call_ended":
        this.markEnded(event.reason);
        break;
      default:
        break;
    }
  }

  /** The agent no longer holds what the stream missed: say so where the lines went missing. */
  private onEventsLost(from: number, to: number, timestamp: string): void {
    const what = from === to ? `Event ${from} was` : `Events ${from} to ${to} were`;
    const text = `${what} lost while the console was away; the view was rebuilt from the agent's snapshot`;
    this.activity.notice(text, "error");
    this.transcript.add(`lost-${from}-${to}`, "system", text, timestamp);
    this.transcript.line(`lost-${from}-${to}`)?.classList.add("lost");
  }

  /** Where the call stands after events were lost: its last items, its state, what is pending. */
  private onSnapshot(snapshot: SnapshotEvent): void {
    this.lastSeq = snapshot.seq ?? this.lastSeq;
    if (this.lastSeq !== null) this.element.dataset["seq"] = String(this.lastSeq);
    for (const item of snapshot.items) {
      if (item.role === "user" || item.role === "assistant") this.transcript.add(item.id, item.role, item.text, item.created_at, item.interrupted);
    }
    if (snapshot.items_truncated) this.activity.notice("The snapshot holds the newest lines only: earlier ones may be missing", "error");
    this.pending.snapshot(new Set(snapshot.pending_speeches.map((speech) => speech.request_id)));
    this.showState(snapshot.state);
  }

  private onSpeechFailed(event: SpeechFailedEvent): void {
    const why = SPEECH_FAILED[event.reason] ?? event.reason;
    const played = event.played_s === undefined ? "" : ` after ${event.played_s.toFixed(1)} s`;
    const text = `✗ did not play${event.started ? " to the end" : ""}: ${why}${played}`;
    const entry = this.activity.find(event.id);
    if (entry) entry.note(text, "failed");
    else this.activity.notice(`A speech ${text.slice(2)}`, "error");
    this.pending.failedToPlay(event, why);
    this.refreshStateSoon();
  }

  private onPlayout(requestId: string | null, text: string, done: boolean): void {
    this.activity.find(requestId)?.note(text);
    this.pending.played(requestId, done);
    this.refreshStateSoon();
  }

  // ------------------------------------------------------------------ the transcript

  private async loadHistory(): Promise<void> {
    try {
      const answer = await this.api.gateway.getHistory(this.call.agent_code, { room_id: this.call.room, limit: HISTORY_LIMIT });
      const history = (answer.data.rooms[0]?.result?.["history"] ?? []) as HistoryItem[];
      for (const item of history) {
        if (item.role === "user" || item.role === "assistant") this.transcript.add(item.id, item.role, item.text, item.created_at, item.interrupted);
      }
    } catch (error) {
      this.checkUnauthorized(error);
    }
  }

  // ------------------------------------------------------------------ state, context, pending

  private refreshStateSoon(): void {
    if (this.stateQueued) return;
    this.stateQueued = true;
    setTimeout(() => {
      this.stateQueued = false;
      void this.refreshState();
    }, 150);
  }

  private async refreshState(): Promise<void> {
    if (this.ended || this.abort.signal.aborted) return;
    try {
      const answer = await this.api.gateway.getState(this.call.agent_code, { room_id: this.call.room }, { signal: this.abort.signal });
      const state = answer.data.rooms[0]?.result?.["state"] as AgentStateInfo | undefined;
      if (state) this.showState(state);
    } catch (error) {
      if (this.checkUnauthorized(error)) return;
      if (error instanceof GatewayError && error.status === 404) this.missing();
    }
  }

  private showState(state: AgentStateInfo): void {
    const firstTime = this.state === null;
    this.state = state;
    this.agentPill.set(state.agent_state);
    this.userPill.set(state.user_state);
    if (state.io) {
      this.io = state.io;
      setSwitch(this.voiceButton, !state.io.agent_audio, state.io.agent_audio ? "Mute the agent" : "Unmute the agent");
      setSwitch(this.listenButton, !state.io.user_audio, state.io.user_audio ? "Stop it listening" : "Let it listen");
    }
    this.contextPanel.show(state);
    this.pending.show(state);
    if (firstTime) void this.loadHistory();
  }

  private async removeContext(key: string): Promise<void> {
    await send(this.target, "Remove context", key, (id) => this.api.gateway.removeContext(this.call.agent_code, { key, room_id: this.call.room }, { idempotencyKey: id }));
  }

  private addOwnSpeech(requestId: string, text: string): void {
    this.pending.add(requestId, text, () => void send(this.target, "Cancel speech", text, (id) => this.api.gateway.cancel(this.call.agent_code, { target_id: requestId, room_id: this.call.room }, { idempotencyKey: id })));
  }

  /** Flip one of the agent's switches (its voice, its listening). */
  private async setIO(name: "agent_audio" | "user_audio"): Promise<void> {
    const on = !this.io[name];
    const body = name === "agent_audio" ? { agent_audio: on, room_id: this.call.room } : { user_audio: on, room_id: this.call.room };
    await send(this.target, "Update I/O", `${name === "agent_audio" ? "voice" : "listening"} ${on ? "on" : "off"}`, (id) => this.api.gateway.updateIO(this.call.agent_code, body, { idempotencyKey: id }));
  }

  // ------------------------------------------------------------------ take over, end call

  private async toggleTakeover(): Promise<void> {
    this.takeoverButton.disabled = true;
    try {
      if (this.takeover) {
        const takeover = this.takeover;
        this.takeover = null;
        await takeover.handBack(this.tellAgent[1].checked);
        this.banner.hidden = true;
        this.takeoverButton.textContent = "Take over";
        this.takeoverButton.setAttribute("aria-pressed", "false");
        this.takeoverButton.focus();
      } else {
        const takeover = await Takeover.start(this.api, this.target, this.io, this.meter, this.element);
        if (takeover) {
          this.takeover = takeover;
          this.banner.hidden = false;
          this.takeoverButton.textContent = "Hand back";
          this.takeoverButton.setAttribute("aria-pressed", "true");
        }
      }
    } finally {
      this.takeoverButton.disabled = this.ended;
      this.refreshStateSoon();
    }
  }

  private buildEndDialog(): HTMLDialogElement {
    const reason = h("input", { attrs: { name: "reason", maxlength: 256, autocomplete: "off", placeholder: "e.g. Resolved by the operator" } });
    reason.id = "end-reason";
    const [afterLabel, after] = checkbox("Let what is playing and queued finish first", true);
    const confirm = h("button", { class: "danger", attrs: { type: "submit", value: "end" }, text: "End the call" });
    const cancel = h("button", { class: "secondary", attrs: { type: "button" }, text: "Keep the call", on: { click: () => dialog.close() } });
    const dialog = h(
      "dialog",
      { class: "confirm", attrs: { "aria-labelledby": "end-title", "aria-describedby": "end-text" } },
      h(
        "form",
        { attrs: { method: "dialog" } },
        h("h2", { id: "end-title", text: "End this call?" }),
        h("p", { id: "end-text", text: `The agent hangs up and the room ${this.call.room} closes for everyone in it. This cannot be undone.` }),
        h("div", { class: "field" }, h("label", { attrs: { for: reason.id }, text: "Reason (optional)" }), reason),
        afterLabel,
        h("div", { class: "form-actions" }, cancel, confirm),
      ),
    );
    dialog.addEventListener("close", () => {
      if (dialog.returnValue !== "end") return;
      dialog.returnValue = "";
      const why = reason.value.trim();
      void send(this.target, "End call", why || null, (id) =>
        this.api.gateway.endCall(this.call.agent_code, { room_id: this.call.room, after_speech: after.checked, ...(why ? { reason: why } : {}) }, { idempotencyKey: id }),
      );
    });
    return dialog;
  }

  private markEnded(reason: string): void {
    if (this.ended) return;
    this.ended = true;
    this.transcript.clearInterim();
    this.transcript.add(`ended-${Date.now()}`, "system", `Call ended: ${reason}`, new Date().toISOString());
    this.streamPill.set("ended");
    this.element.classList.add("ended");
    for (const button of [this.voiceButton, this.listenButton, this.takeoverButton, this.endButton]) button.disabled = true;
    clearInterval(this.stateTimer);
    if (this.takeover) void this.toggleTakeover();
  }

  private renderMeta(): void {
    const since = this.call.started_at ? ` · ${duration(Date.now() / 1000 - this.call.started_at)}` : "";
    const users = this.call.users.length ? ` · ${this.call.users.join(", ")}` : " · no caller";
    const operators = this.call.operators ? ` · ${this.call.operators} operator${this.call.operators > 1 ? "s" : ""} on the line` : "";
    this.meta.textContent = `${this.call.agent_code} · ${this.call.agent_identity}${users}${since}${operators}`;
  }

  private checkUnauthorized(error: unknown): boolean {
    if (error instanceof GatewayError && error.status === 401) {
      this.onUnauthorized();
      return true;
    }
    return false;
  }
}

function pill(label: string): { element: HTMLElement; set(value: string): void } {
  const value = h("b", { text: "…" });
  const element = h("span", { class: "pill" }, h("span", { class: "pill-label", text: label }), value);
  return {
    element,
    set(state: string) {
      value.textContent = state;
      element.dataset["state"] = state;
    },
  };
}

function toggle(label: string, onClick: () => void): HTMLButtonElement {
  return h("button", { class: "secondary toggle", attrs: { type: "button" }, text: label, on: { click: onClick } });
}

/** A switch's button says what a click does; `off` marks it while the switch is off. */
function setSwitch(button: HTMLButtonElement, off: boolean, label: string): void {
  button.classList.toggle("off", off);
  button.textContent = label;
}
