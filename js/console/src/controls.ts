/**
 * The controls of one call: speak, context, instructions, a message as the user, and the
 * agent's switches. Each sends one request through the gateway client (an Idempotency-Key per
 * click, so a retry is applied once) and logs its answer in the activity log.
 */
import type { ControlResponse, SpeakResponse, AddContextResponse } from "../../src/generated/wire.js";
import { newRequestId } from "../../src/retry.js";
import { type Activity, describeAnswer } from "./activity.js";
import type { GatewayClient } from "./api.js";
import { checkbox, field, h, radios, uid } from "./dom.js";

export interface CallTarget {
  gateway: GatewayClient;
  agentCode: string;
  room: string;
  activity: Activity;
  /** After a control that changes the agent's state: read it again. */
  changed(): void;
  /** A 401 anywhere: the session ended. */
  unauthorized(error: unknown): boolean;
}

type Answer = SpeakResponse | AddContextResponse | ControlResponse;

/** Send one control, logged: `label` and `detail` in the log, the answer or the error after. */
export async function send<T extends Answer>(target: CallTarget, label: string, detail: string | null, call: (requestId: string) => Promise<T>, requestId = newRequestId()): Promise<T | null> {
  const entry = target.activity.start(label, detail, requestId);
  try {
    const answer = await call(requestId);
    entry.ok(describeAnswer(answer));
    return answer;
  } catch (error) {
    entry.fail(error);
    target.unauthorized(error);
    return null;
  } finally {
    target.changed();
  }
}

/** Runs `action` on submit (and on Ctrl/Cmd+Enter in a text area); the button waits meanwhile. */
function form(label: string, children: HTMLElement[], button: string, action: () => Promise<boolean | void>): HTMLFormElement {
  const submit = h("button", { class: "primary", attrs: { type: "submit" }, text: button });
  const element = h("form", { class: "control-form", attrs: { "aria-label": label } }, ...children, h("div", { class: "form-actions" }, submit));
  element.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    submit.disabled = true;
    try {
      if ((await action()) !== false) element.reset();
    } finally {
      submit.disabled = false;
    }
  });
  element.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target instanceof HTMLTextAreaElement) {
      event.preventDefault();
      element.requestSubmit();
    }
  });
  return element;
}

function textArea(name: string, placeholder: string, rows = 3): HTMLTextAreaElement {
  return h("textarea", { attrs: { name, rows, placeholder, required: true, maxlength: 10000 } });
}

export function speakForm(target: CallTarget, onSent: (requestId: string, text: string) => void, onRefused: (requestId: string) => void): HTMLFormElement {
  const message = textArea("message", "What the agent says, word for word");
  const [when, mode] = radios("When", uid("speak-mode"), [["queue", "After what is queued"], ["interrupt", "Now (interrupt)"], ["if_idle", "Only if idle"]], "queue");
  return form("Speak", [field("Message", message, "Ctrl+Enter sends."), when], "Speak", async () => {
    const text = message.value;
    const chosen = mode();
    const requestId = newRequestId();
    // listed before the answer: its playout events may come first
    onSent(requestId, text);
    const answer = await send(target, "Speak", `${text} · ${chosen}`, (id) => target.gateway.speak(target.agentCode, { message: text, room_id: target.room, mode: chosen }, { idempotencyKey: id }), requestId);
    if (answer === null) onRefused(requestId);
    return answer !== null;
  });
}

export function contextForm(target: CallTarget, onAdded: (key: string | null, text: string, requestId: string) => void): HTMLFormElement {
  const context = textArea("context", "Background knowledge for the agent's next replies (nothing is spoken)");
  const key = h("input", { attrs: { name: "key", maxlength: 128, autocomplete: "off", placeholder: "e.g. order" } });
  return form("Add context", [field("Context", context), field("Key (optional)", key, "A later add with the same key replaces it; a key lets you remove it.")], "Add context", async () => {
    const text = context.value;
    const entryKey = key.value.trim() || null;
    const answer = await send(target, "Add context", entryKey ? `${entryKey}: ${text}` : text, (id) =>
      target.gateway.addContext(target.agentCode, { context: text, room_id: target.room, ...(entryKey ? { key: entryKey } : {}) }, { idempotencyKey: id }),
    );
    if (answer) onAdded(entryKey, text, answer.data.request_id);
    return answer !== null;
  });
}

export function instructionsForm(target: CallTarget): HTMLElement {
  const instructions = textArea("instructions", "e.g. Offer the customer a 10% discount.");
  const [how, mode] = radios("How", uid("instr-mode"), [["append", "Add to its own"], ["replace", "Replace them"]], "append");
  const update = form("Update instructions", [field("Instructions", instructions), how], "Update instructions", async () => {
    const text = instructions.value;
    const chosen = mode();
    return (await send(target, "Update instructions", `${chosen}: ${text}`, (id) => target.gateway.updateInstructions(target.agentCode, { instructions: text, mode: chosen, room_id: target.room }, { idempotencyKey: id }))) !== null;
  });
  const reset = h("button", {
    class: "secondary",
    attrs: { type: "button" },
    text: "Reset instructions",
    on: { click: () => void send(target, "Reset instructions", null, (id) => target.gateway.resetInstructions(target.agentCode, { room_id: target.room }, { idempotencyKey: id })) },
  });
  return h("div", { class: "stack" }, update, h("div", { class: "form-actions" }, reset));
}

export function userMessageForm(target: CallTarget, onSilentMessage: () => void): HTMLFormElement {
  const text = textArea("text", "Text as the user's own turn", 2);
  const [respondLabel, respond] = checkbox("Let the agent answer", true);
  const [interruptLabel, interrupt] = checkbox("Interrupt the agent first", false);
  return form("Send as the user", [field("User message", text), h("div", { class: "checks" }, respondLabel, interruptLabel)], "Send as the user", async () => {
    const said = text.value;
    const answered = respond.checked;
    const answer = await send(target, "User message", said, (id) => target.gateway.userMessage(target.agentCode, { text: said, respond: answered, interrupt: interrupt.checked, room_id: target.room }, { idempotencyKey: id }));
    // a message the agent does not answer comes as no event: the history has it
    if (answer && !answered) onSilentMessage();
    return answer !== null;
  });
}
