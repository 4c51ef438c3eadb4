/** The calls list: the tenant's live calls, read again every few seconds. */
import { type CallInfo, type ConsoleApi, GatewayError } from "./api.js";
import { duration, fill, h } from "./dom.js";

const EVERY_MS = 2_000;

export class CallsList {
  readonly element: HTMLElement;
  private readonly list = h("ul", { class: "call-list", attrs: { "aria-labelledby": "calls-title" } });
  private readonly count = h("span", { class: "count" });
  private readonly status = h("p", { class: "list-status", attrs: { role: "status" } });
  private readonly abort = new AbortController();
  private calls: CallInfo[] = [];
  private selected: string | null = null;
  private updatedAt = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private failing = false;

  constructor(
    private readonly api: ConsoleApi,
    private readonly onSelect: (call: CallInfo) => void,
    private readonly onChange: (calls: CallInfo[]) => void,
    private readonly onUnauthorized: () => void,
  ) {
    this.element = h(
      "nav",
      { class: "calls", attrs: { "aria-labelledby": "calls-title" } },
      h("h2", { id: "calls-title", attrs: { tabindex: -1 } }, "Live calls ", this.count),
      this.status,
      this.list,
    );
  }

  start(): void {
    void this.poll();
  }

  stop(): void {
    this.abort.abort();
    clearTimeout(this.timer);
  }

  select(room: string | null): void {
    this.selected = room;
    this.render();
  }

  private async poll(): Promise<void> {
    try {
      this.calls = await this.api.calls(this.abort.signal);
      this.updatedAt = Date.now();
      this.failing = false;
      this.render();
      this.onChange(this.calls);
    } catch (error) {
      if (this.abort.signal.aborted) return;
      if (error instanceof GatewayError && error.status === 401) return this.onUnauthorized();
      this.failing = true;
      this.status.textContent = error instanceof GatewayError ? `Cannot list the calls (${error.code}); retrying.` : "Cannot list the calls; retrying.";
    }
    if (!this.abort.signal.aborted) this.timer = setTimeout(() => void this.poll(), EVERY_MS);
  }

  private render(): void {
    this.count.textContent = String(this.calls.length);
    if (!this.failing) this.status.textContent = this.calls.length ? `Updated ${new Date(this.updatedAt).toLocaleTimeString()}` : "No live calls right now. New calls appear here by themselves.";
    const now = Date.now() / 1000;
    fill(
      this.list,
      ...this.calls.map((call) => {
        const current = call.room === this.selected;
        const who = call.users.length ? call.users.join(", ") : "no caller";
        return h(
          "li",
          {},
          h(
            "button",
            {
              class: `call-item${current ? " current" : ""}`,
              attrs: { type: "button", "aria-current": current ? "true" : false, "data-room": call.room },
              on: { click: () => this.onSelect(call) },
            },
            h("span", { class: "call-room", text: call.room }),
            h("span", { class: "state", attrs: { "data-state": call.agent_state }, text: call.agent_state }),
            h("span", { class: "call-line", text: `${call.agent_code} · ${who}` }),
            h("span", { class: "call-time", text: call.started_at ? duration(now - call.started_at) : "" }),
            call.operators ? h("span", { class: "operator-tag", text: "● operator on the line" }) : null,
          ),
        );
      }),
    );
  }
}
