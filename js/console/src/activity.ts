/**
 * The activity log: every control the operator sends, its answer (the ack, or the error code
 * and sentence) and, for a speech, its playout events as they come.
 */
import { GatewayError } from "./api.js";
import { clock, h } from "./dom.js";

export type Outcome = "pending" | "ok" | "error";

export class ActivityEntry {
  readonly element: HTMLLIElement;
  private readonly status: HTMLElement;
  private readonly notes: HTMLUListElement;

  constructor(label: string, detail: string | null, readonly requestId: string | null) {
    this.status = h("p", { class: "status", text: "sending…" });
    this.notes = h("ul", { class: "notes" });
    this.element = h(
      "li",
      { class: "entry pending", attrs: { "data-request-id": requestId } },
      h("div", { class: "entry-head" }, h("b", { class: "what", text: label }), h("time", { text: clock(new Date()) })),
      this.status,
      detail ? h("p", { class: "detail", text: detail }) : null,
      this.notes,
    );
  }

  /** The control was acknowledged: `text` says what the agent answered. */
  ok(text: string): void {
    this.set("ok", `✓ ${text}`);
  }

  /** The control was refused or failed: its error code and sentence. */
  fail(error: unknown): void {
    if (error instanceof GatewayError) this.set("error", `✗ ${error.code}: ${error.message}`);
    else this.set("error", `✗ ${error instanceof Error ? error.message : String(error)}`);
  }

  /** A later event about it (playout). */
  note(text: string, kind = "event"): void {
    this.notes.append(h("li", { class: kind }, h("time", { text: clock(new Date()) }), text));
  }

  get outcome(): Outcome {
    return this.element.classList.contains("ok") ? "ok" : this.element.classList.contains("error") ? "error" : "pending";
  }

  private set(outcome: Outcome, text: string): void {
    this.element.classList.remove("pending", "ok", "error");
    this.element.classList.add(outcome);
    this.status.textContent = text;
  }
}

export class Activity {
  readonly element: HTMLOListElement;
  private readonly byRequest = new Map<string, ActivityEntry>();

  constructor() {
    this.element = h("ol", { class: "activity-log", attrs: { "aria-live": "polite", "aria-relevant": "additions text" } });
  }

  start(label: string, detail: string | null = null, requestId: string | null = null): ActivityEntry {
    const entry = new ActivityEntry(label, detail, requestId);
    if (requestId) this.byRequest.set(requestId, entry);
    this.element.prepend(entry.element); // newest first
    while (this.element.children.length > 200) this.element.lastElementChild?.remove();
    return entry;
  }

  /** The entry of the control sent with `requestId` (a playout event names it). */
  find(requestId: string | null | undefined): ActivityEntry | undefined {
    return requestId ? this.byRequest.get(requestId) : undefined;
  }

  /** Something that happened without a control (the stream reconnected, events were lost). */
  notice(text: string, kind: Outcome = "ok"): void {
    this.element.prepend(h("li", { class: `entry notice ${kind}` }, h("div", { class: "entry-head" }, h("span", { class: "status", text }), h("time", { text: clock(new Date()) }))));
    while (this.element.children.length > 200) this.element.lastElementChild?.remove();
  }
}

/** A control's answer in one line: its sentence, and what the agent reported beyond success. */
export function describeAnswer(answer: { message: string; data: { delivered_to_rooms: number; request_id: string; rooms: { result?: Record<string, unknown> | null }[] } }): string {
  const result = answer.data.rooms.find((room) => room.result)?.result;
  const extras: string[] = [];
  if (result) {
    for (const key of ["interrupted", "cancelled", "removed", "key", "instructions_mode"]) {
      if (key in result) extras.push(`${key}: ${String(result[key])}`);
    }
    const io = result["io"] as Record<string, boolean> | undefined;
    if (io) extras.push(`voice ${io["agent_audio"] ? "on" : "off"}, listening ${io["user_audio"] ? "on" : "off"}`);
  }
  const rooms = answer.data.delivered_to_rooms === 1 ? "" : ` (${answer.data.delivered_to_rooms} rooms)`;
  return `${answer.message}${rooms}${extras.length ? ` · ${extras.join(", ")}` : ""}`;
}
