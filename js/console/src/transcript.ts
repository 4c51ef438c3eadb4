/**
 * A call's transcript: the conversation's items (user and agent, tool calls, call notes), each
 * once by its id and in the order they were said, plus the user's interim words as a live line.
 */
import { clock, h } from "./dom.js";

export type LineRole = "user" | "assistant" | "tool" | "system";

export class Transcript {
  readonly element = h("ol", { class: "transcript-lines", attrs: { role: "log", "aria-live": "polite", "aria-label": "Transcript" } });
  private readonly lines = new Map<string, HTMLLIElement>();
  private interim: HTMLLIElement | null = null;
  private scrollQueued = false;
  private lastAt = 0;

  /** The line drawn for an item id, if any. */
  line(id: string): HTMLLIElement | undefined {
    return this.lines.get(id);
  }

  add(id: string, role: LineRole, text: string, timestamp: string, interrupted = false): void {
    if (this.lines.has(id)) return; // each item once, however often it is read
    const at = new Date(timestamp);
    const who = { user: "User", assistant: "Agent", tool: "Tool", system: "Call" }[role];
    const line = h(
      "li",
      { class: `line ${role}${interrupted ? " interrupted" : ""}`, attrs: { "data-item-id": id, "data-at": at.getTime() } },
      h("span", { class: "who", text: who }),
      h("p", { class: "said", text }),
      h("time", { attrs: { datetime: at.toISOString() }, text: clock(at) }),
      interrupted ? h("span", { class: "tag", text: "cut off" }) : null,
    );
    this.lines.set(id, line);
    // in the order things were said, whichever way they arrived; a new line is almost always
    // the last one, so that case costs no walk through a long transcript
    if (at.getTime() >= this.lastAt) {
      this.lastAt = at.getTime();
      this.element.insertBefore(line, this.interim);
    } else {
      const later = [...this.element.children].find((other) => other !== this.interim && Number((other as HTMLElement).dataset["at"]) > at.getTime());
      this.element.insertBefore(line, later ?? this.interim);
    }
    this.scroll();
  }

  /** The user's words as the STT hears them, until their turn is committed. */
  showInterim(text: string, timestamp: string, final: boolean): void {
    if (!this.interim) {
      this.interim = h("li", { class: "line user live" }, h("span", { class: "who", text: "User" }), h("p", { class: "said" }), h("time"));
      this.element.append(this.interim);
    }
    const at = new Date(timestamp);
    this.interim.classList.toggle("final", final);
    this.interim.querySelector(".said")!.textContent = text;
    const time = this.interim.querySelector("time")!;
    time.textContent = final ? clock(at) : "speaking…";
    this.scroll();
  }

  clearInterim(): void {
    this.interim?.remove();
    this.interim = null;
  }

  /** Keep the newest line in view, once per frame, unless the operator scrolled up to read. */
  private scroll(): void {
    if (this.scrollQueued) return;
    const list = this.element;
    const following = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    if (!following && this.lines.size > 1) return;
    this.scrollQueued = true;
    requestAnimationFrame(() => {
      this.scrollQueued = false;
      list.scrollTop = list.scrollHeight;
    });
  }
}
