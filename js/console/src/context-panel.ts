/**
 * The context the agent holds, as the call view shows it: the entries get-state lists (with the
 * text this console sent for them), which reply used each one (`context_used`, or the entry's
 * `used` in get-state when this page did not see the event: it opened later), and the entries
 * dropped before any reply used them (`context_dropped`, with the reason).
 */
import type { AgentStateInfo, ContextDroppedEvent, ContextEntryInfo, ContextUsedEvent, LlmCall } from "../../src/generated/wire.js";
import type { Activity } from "./activity.js";
import { clock, fill, h } from "./dom.js";

/** Context entries dropped before any reply used them, listed with their reason (the newest). */
const DROPPED_SHOWN = 5;

const CONTEXT_DROPPED: Record<ContextDroppedEvent["reason"], string> = {
  removed: "removed",
  replaced: "replaced by a newer entry with the same key",
  expired: "its time ran out",
  evicted: "evicted to keep within the context budget",
  session_closed: "the session closed",
};

export class ContextPanel {
  readonly element: HTMLElement;
  private readonly list = h("ul", { class: "context-list", attrs: { "aria-label": "Context entries" } });
  private readonly summary = h("p", { class: "panel-summary" });
  private readonly droppedList = h("ul", { class: "context-dropped-list", attrs: { "aria-label": "Context entries dropped before any reply used them" } });
  private readonly texts = new Map<string, string>();
  /** context_used per entry version (`versionOf`): when, and which model request. */
  private readonly used = new Map<string, ContextUsedEvent>();
  /** Entry versions a context_dropped took away (a get-state answer already on its way may still list them). */
  private readonly dropped = new Set<string>();
  private context: { entries: ContextEntryInfo[]; chars: number; total: number | undefined } = { entries: [], chars: 0, total: undefined };

  constructor(
    private readonly activity: Activity,
    private readonly remove: (key: string) => void,
  ) {
    this.element = h(
      "section",
      { class: "panel", attrs: { "aria-labelledby": "context-title" } },
      h("h3", { id: "context-title", text: "Context the agent holds" }),
      this.summary,
      this.list,
      this.droppedList,
    );
  }

  /** The text this console sent for an entry (by its key, else the request id), to show beside it. */
  remember(key: string, text: string): void {
    this.texts.set(key, text);
  }

  /** The entries a get-state (or snapshot) answer lists. */
  show(state: AgentStateInfo): void {
    this.context = { entries: state.context_entries, chars: state.context_chars, total: state.context_entries_total };
    this.render();
  }

  onUsed(event: ContextUsedEvent): void {
    if (this.used.has(versionOf(event))) return;
    this.used.set(versionOf(event), event);
    this.activity.find(event.request_id)?.note(`✓ ${usedText(event.llm_call)}`);
    this.render();
  }

  onDropped(event: ContextDroppedEvent): void {
    this.dropped.add(versionOf(event));
    const why = CONTEXT_DROPPED[event.reason] ?? event.reason;
    this.activity.find(event.request_id)?.note(`■ dropped before any reply used it: ${why}`, "failed");
    const at = new Date(event.timestamp);
    const element = h(
      "li",
      { class: "context-dropped", attrs: { "data-entry-id": event.entry_id, "data-request-id": event.request_id, "data-reason": event.reason } },
      h("code", { text: event.key ?? event.entry_id }),
      h("span", { text: ` dropped: ${why} · ` }),
      h("time", { attrs: { datetime: at.toISOString() }, text: clock(at) }),
    );
    this.droppedList.prepend(element);
    while (this.droppedList.children.length > DROPPED_SHOWN) this.droppedList.lastElementChild?.remove();
    this.render();
  }

  private render(): void {
    const { chars, total } = this.context;
    // what a context_dropped took away goes now, before the next get-state says so
    const entries = this.context.entries.filter((entry) => !this.dropped.has(versionOf(entry)));
    const count = Math.max(entries.length, (total ?? 0) - (this.context.entries.length - entries.length));
    this.summary.textContent = count ? `${count} ${count === 1 ? "entry" : "entries"}, ${chars} characters` : "None: the agent holds no context from senders.";
    fill(
      this.list,
      ...entries.map((entry) => {
        const text = this.texts.get(entry.key ?? entry.request_id ?? "");
        const name = entry.key ?? entry.entry_id;
        const seen = this.used.get(versionOf(entry));
        // an entry used before this page saw its events: the state names the request, not when
        const used: { llm_call: LlmCall; timestamp?: string } | undefined = seen ?? (entry.used ? { llm_call: entry.used } : undefined);
        const remove = entry.key
          ? h("button", {
              class: "small secondary",
              attrs: { type: "button", "aria-label": `Remove context ${entry.key}` },
              text: "Remove",
              on: { click: () => this.remove(entry.key!) },
            })
          : null;
        const expires = entry.expires_in_s === null ? "" : ` · expires in ${Math.ceil(entry.expires_in_s)} s`;
        return h(
          "li",
          { class: `context-entry${used ? " used" : ""}`, attrs: { "data-entry-id": entry.entry_id, "data-request-id": entry.request_id } },
          h("div", { class: "entry-line" }, h("code", { text: name }), remove),
          h("p", { class: "context-meta", text: `${entry.role} · ${entry.chars} chars · ${entry.scope === "next_turn" ? "next turn only" : "persistent"}${expires}` }),
          text ? h("p", { class: "context-text", text }) : null,
          used ? h("p", { class: "context-used" }, `✓ ${usedText(used.llm_call)}`, used.timestamp ? ` · ` : null, used.timestamp ? h("time", { attrs: { datetime: used.timestamp }, text: clock(new Date(used.timestamp)) }) : null) : null,
        );
      }),
    );
  }
}

/**
 * One version of a context entry: a keyed entry keeps its entry id when a later add_context
 * replaces it, and the request that added it tells the versions apart.
 */
function versionOf(entry: { entry_id: string; request_id: string | null }): string {
  return `${entry.entry_id} ${entry.request_id ?? ""}`;
}

/** What a context_used (or an entry's `used`) says: which model request carried the entry. */
function usedText(call: LlmCall): string {
  return `used in a reply (${call.realtime ? "realtime model, " : ""}model request ${call.index})`;
}
