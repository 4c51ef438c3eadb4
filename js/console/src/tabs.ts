/** An accessible tab set: Left/Right/Home/End move between tabs, one tab stop for the list. */
import { h, uid } from "./dom.js";

export function tabs(label: string, panels: [string, HTMLElement][]): HTMLElement {
  const tabButtons: HTMLButtonElement[] = [];
  const panelElements: HTMLElement[] = [];
  const select = (index: number, focus: boolean): void => {
    tabButtons.forEach((tab, i) => {
      const selected = i === index;
      tab.setAttribute("aria-selected", String(selected));
      tab.tabIndex = selected ? 0 : -1;
      panelElements[i]!.hidden = !selected;
    });
    if (focus) tabButtons[index]!.focus();
  };
  for (const [name, content] of panels) {
    const tabId = uid("tab");
    const panelId = uid("panel");
    const index = tabButtons.length;
    tabButtons.push(h("button", { id: tabId, class: "tab", text: name, attrs: { type: "button", role: "tab", "aria-controls": panelId }, on: { click: () => select(index, false) } }));
    panelElements.push(h("div", { id: panelId, class: "tab-panel", attrs: { role: "tabpanel", "aria-labelledby": tabId, tabindex: 0 } }, content));
  }
  const list = h("div", { class: "tab-list", attrs: { role: "tablist", "aria-label": label } }, ...tabButtons);
  list.addEventListener("keydown", (event) => {
    const current = tabButtons.findIndex((tab) => tab.getAttribute("aria-selected") === "true");
    const last = tabButtons.length - 1;
    const next = { ArrowRight: current === last ? 0 : current + 1, ArrowLeft: current === 0 ? last : current - 1, Home: 0, End: last }[event.key];
    if (next === undefined) return;
    event.preventDefault();
    select(next, true);
  });
  select(0, false);
  return h("div", { class: "tabs" }, list, ...panelElements);
}
