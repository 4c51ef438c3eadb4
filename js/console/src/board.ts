/** The overview shown while no call is open: every live call of the tenant at a glance. */
import type { CallInfo } from "./api.js";
import { duration, fill, h } from "./dom.js";

export class CallsBoard {
  readonly element: HTMLElement;
  private readonly stats = h("div", { class: "stats", attrs: { role: "group", "aria-label": "Summary" } });
  private readonly rows = h("tbody");
  private readonly empty = h("p", { class: "board-empty", text: "No live calls right now. They appear here as they start." });

  constructor(private readonly onSelect: (call: CallInfo) => void) {
    this.element = h(
      "section",
      { class: "call board", attrs: { "aria-labelledby": "board-title" } },
      h("header", { class: "board-head" }, h("h2", { id: "board-title", text: "Live calls at a glance" }), h("p", { class: "muted", text: "Open a call to follow its transcript, steer the agent or take over." })),
      this.stats,
      h(
        "div",
        { class: "panel board-table" },
        h(
          "table",
          { class: "calls-table" },
          h("caption", { class: "visually-hidden", text: "Live calls" }),
          h("thead", {}, h("tr", {}, ...["Room", "Agent code", "Agent", "Caller", "Duration", "Operator"].map((name) => h("th", { attrs: { scope: "col" }, text: name })))),
          this.rows,
        ),
        this.empty,
      ),
    );
  }

  update(calls: CallInfo[]): void {
    const now = Date.now() / 1000;
    const count = (state: string) => calls.filter((call) => call.agent_state === state).length;
    const longest = Math.max(0, ...calls.map((call) => (call.started_at ? now - call.started_at : 0)));
    const stat = (value: string | number, label: string) => h("div", { class: "stat" }, h("b", { text: String(value) }), h("span", { text: label }));
    fill(
      this.stats,
      stat(calls.length, calls.length === 1 ? "live call" : "live calls"),
      stat(count("speaking"), "agents speaking"),
      stat(count("listening"), "agents listening"),
      stat(count("thinking"), "agents thinking"),
      stat(calls.filter((call) => call.operators).length, "taken over"),
      stat(calls.length ? duration(longest) : "–", "longest call"),
    );
    this.empty.hidden = calls.length > 0;
    fill(
      this.rows,
      ...calls.map((call) =>
        h(
          "tr",
          {},
          h("th", { attrs: { scope: "row" } }, h("button", { class: "link", attrs: { type: "button", "aria-label": `Open the call ${call.room}` }, text: call.room, on: { click: () => this.onSelect(call) } })),
          h("td", {}, h("code", { text: call.agent_code })),
          h("td", {}, h("span", { class: "state", attrs: { "data-state": call.agent_state }, text: call.agent_state })),
          h("td", { text: call.users.join(", ") || "no caller" }),
          h("td", { class: "num", text: call.started_at ? duration(now - call.started_at) : "–" }),
          h("td", { text: call.operators ? "on the line" : "–" }),
        ),
      ),
    );
  }
}
