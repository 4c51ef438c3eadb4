/**
 * A tiny element builder. Every text goes in as `textContent` (never HTML), so nothing an
 * agent, a caller or another tenant's data says can become markup in the page.
 */
export type Child = Node | string | number | null | undefined | false;

export interface Props {
  class?: string;
  id?: string;
  text?: string;
  /** Attributes, `aria-*` and `data-*` included; `false`/`null` leaves one out. */
  attrs?: Record<string, string | number | boolean | null | undefined>;
  on?: { [K in keyof HTMLElementEventMap]?: (event: HTMLElementEventMap[K]) => void };
}

export function h<K extends keyof HTMLElementTagNameMap>(tag: K, props: Props = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  if (props.class) element.className = props.class;
  if (props.id) element.id = props.id;
  if (props.text !== undefined) element.textContent = props.text;
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    if (value === false || value === null || value === undefined) continue;
    element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const [name, listener] of Object.entries(props.on ?? {})) element.addEventListener(name, listener as EventListener);
  append(element, ...children);
  return element;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
}

/** Replace `parent`'s children. */
export function fill(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, ...children);
}

let ids = 0;
/** A fresh element id, to tie a label to its field. */
export function uid(prefix: string): string {
  return `${prefix}-${++ids}`;
}

/** A labelled field: `<label for>` plus the control, in one wrapper. */
export function field(label: string, control: HTMLInputElement | HTMLTextAreaElement | HTMLSelectElement, hint?: string): HTMLElement {
  control.id ||= uid("f");
  const hintId = hint ? `${control.id}-hint` : null;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div", { class: "field" }, h("label", { attrs: { for: control.id }, text: label }), control, hint ? h("p", { class: "hint", id: hintId!, text: hint }) : null);
}

/** A group of radio buttons under a legend; returns the fieldset and a getter of the choice. */
export function radios<T extends string>(legend: string, name: string, choices: [T, string][], initial: T): [HTMLFieldSetElement, () => T] {
  const inputs = choices.map(([value, label]) => {
    const input = h("input", { attrs: { type: "radio", name, value, checked: value === initial } });
    input.id = uid(name);
    return [input, h("label", { class: "choice", attrs: { for: input.id } }, input, label)] as const;
  });
  const set = h("fieldset", { class: "radios" }, h("legend", { text: legend }), ...inputs.map(([, label]) => label));
  return [set, () => (inputs.find(([input]) => input.checked)?.[0].value ?? initial) as T];
}

export function checkbox(label: string, checked: boolean): [HTMLLabelElement, HTMLInputElement] {
  const input = h("input", { attrs: { type: "checkbox", checked } });
  input.id = uid("c");
  return [h("label", { class: "check", attrs: { for: input.id } }, input, label), input];
}

export function clock(date: Date): string {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return hours ? `${hours}:${mm}:${ss}` : `${mm}:${ss}`;
}
