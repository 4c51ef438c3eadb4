/**
 * Turning what a caller passes into the exact text sent: an id, validation (the agent's own
 * rules and sentences, so a bad request is refused before it leaves), size.
 * Python: sender/requests.py and the request models of protocol.py.
 */
import { ContextError } from "./errors.js";
import type { Request } from "./generated/wire.js";
import { MAX_ID_LENGTH, MAX_PAYLOAD_BYTES, MESSAGE_TYPES, SESSION_EVENT_TYPES, utf8Length } from "./protocol.js";
import { newRequestId } from "./retry.js";

/** A request as given: one of the protocol's, or any object naming a `type`. */
export type RequestInput = Request | ({ type: string } & Record<string, unknown>);

type Rule =
  | ["bool"]
  | ["str", number?, number?] // min, max length
  | ["num", number, number] // > min, <= max
  | ["int", number, number] // >= min, <= max
  | ["enum", readonly string[]]
  | ["format", RegExp, string] // a string of a fixed format, and how it is written
  | ["object", Fields]; // v1.3: an object of its own fields (speak's `audio`)
type Fields = Record<string, [Rule, ("required" | "nullable")?]>;

const ROLES = ["system", "developer", "user", "assistant"];
const KEY: Rule = ["str", 1, 128];
const TEXT: Rule = ["str"];
const BOOL: Rule = ["bool"];

// each type's own fields, in the order the Python models declare them (the first problem is named)
const FIELDS: Record<string, Fields> = {
  speak: {
    message: [TEXT, "nullable"],
    context: [TEXT, "nullable"],
    instructions: [TEXT, "nullable"],
    allow_interruptions: [BOOL],
    interrupt: [BOOL],
    mode: [["enum", ["queue", "interrupt", "if_idle"]], "nullable"],
    end_call_after: [BOOL],
    add_to_history: [BOOL],
    start_within_s: [["num", 0, 3600], "nullable"],
    audio: [
      [
        "object",
        {
          stream_id: [["str", 1, MAX_ID_LENGTH], "required"],
          sha256: [["format", /^[0-9a-f]{64}$/, "the clip's SHA-256 as 64 lowercase hex digits"], "nullable"],
        },
      ],
      "nullable",
    ],
  },
  add_context: {
    message: [TEXT, "nullable"],
    context: [TEXT, "nullable"],
    role: [["enum", ROLES]],
    key: [KEY, "nullable"],
    trigger_reply: [BOOL],
    scope: [["enum", ["persistent", "next_turn"]]],
    ttl_s: [["num", 0, 7 * 24 * 3600], "nullable"],
  },
  remove_context: { key: [KEY, "required"] },
  get_state: {},
  end_call: { after_speech: [BOOL], reason: [["str", 0, 256], "nullable"] },
  interrupt: { force: [BOOL] },
  cancel: { target_id: [["str", 1, MAX_ID_LENGTH], "required"] },
  update_io: { agent_audio: [BOOL, "nullable"], user_audio: [BOOL, "nullable"], transcription: [BOOL, "nullable"] },
  update_instructions: { instructions: [TEXT, "required"], mode: [["enum", ["append", "replace"]]] },
  reset_instructions: {},
  user_message: { text: [TEXT, "required"], respond: [BOOL], interrupt: [BOOL] },
  get_history: { limit: [["int", 1, 200]] },
  subscribe: { interim: [BOOL], tool_arguments: [BOOL], since_seq: [["int", 0, Number.MAX_SAFE_INTEGER], "nullable"] },
  unsubscribe: {},
};
const COMMON: Fields = {
  id: [["str", 1, MAX_ID_LENGTH], "nullable"],
  room_id: [TEXT, "nullable"],
  agent_code: [TEXT, "nullable"],
  protocol: [["format", /^1\.[0-9]{1,3}$/, "a protocol version such as '1.3'"], "nullable"],
};
const TYPE_LIST = MESSAGE_TYPES.join(", ");

// Python's str.isspace() set, and "visible": not Cc, Cf, Co, Cn, Cs or a separator
const BLANK = /^[\t\n\v\f\r \x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$/;
const VISIBLE = /[^\p{Cc}\p{Cf}\p{Co}\p{Cn}\p{Cs}\p{Zs}\p{Zl}\p{Zp}]/u;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Whether `text` has something to say: a character that is not invisible, control or blank. */
export function hasVisibleText(text: string): boolean {
  return VISIBLE.test(text);
}

/** The id an error about `obj` may echo: its id if it is usable text, else null. */
export function requestIdOf(obj: Record<string, unknown>): string | null {
  const id = obj.id;
  return typeof id === "string" && id.length <= MAX_ID_LENGTH && !LONE_SURROGATE.test(id) ? id : null;
}

/**
 * Checks a request as the agent would, and returns the sentence the agent would refuse it with
 * (Python's `protocol.validate_request`), or null when it is valid.
 */
export function requestProblem(obj: Record<string, unknown>): string | null {
  const type = obj.type;
  if (type === undefined) return `Missing field 'type'. Must be one of: ${TYPE_LIST}`;
  if (typeof type !== "string" || !(type in FIELDS)) return `Invalid type. Must be one of: ${TYPE_LIST}`;
  if (type === "subscribe" && "events" in obj) {
    const events = obj.events;
    if (!Array.isArray(events)) return "Field 'events' must be a list of event names.";
    if (events.length === 0) return "Field 'events' must name at least one event.";
  }
  const fields: Fields = { ...COMMON, ...FIELDS[type] };
  for (const [name, [rule, flag]] of Object.entries(fields)) {
    const problem = fieldProblem(name, obj[name], rule, flag);
    if (problem) return problem;
  }
  if (type === "subscribe") {
    const events = obj.events;
    if (events === undefined) return "Missing field 'events'.";
    const list = events as unknown[];
    if (list.length > 2 * SESSION_EVENT_TYPES.length) return "Field 'events' is invalid.";
    for (const [i, event] of list.entries()) {
      const problem = fieldProblem(`events.${i}`, event, ["enum", SESSION_EVENT_TYPES], "required");
      if (problem) return problem;
    }
  }
  for (const name of Object.keys(fields)) {
    const value = obj[name];
    if (typeof value === "string" && LONE_SURROGATE.test(value)) {
      return `Field '${name}' is not valid text: it contains a lone UTF-16 surrogate.`;
    }
  }
  return typeProblem(type, obj);
}

function fieldProblem(name: string, value: unknown, rule: Rule, flag?: "required" | "nullable"): string | null {
  if (value === undefined) return flag === "required" ? `Missing field '${name}'.` : null;
  if (value === null && flag === "nullable") return null;
  switch (rule[0]) {
    case "bool":
      return typeof value === "boolean" ? null : `Field '${name}' must be a boolean.`;
    case "str": {
      if (typeof value !== "string") return `Field '${name}' must be a string.`;
      const [, min = 0, max = Infinity] = rule;
      if (value.length > max) return `Field '${name}' must be at most ${max} characters.`;
      if (value.length < min) {
        return name === "id" ? `Field 'id' must be 1 to ${MAX_ID_LENGTH} characters.` : `Field '${name}' must not be empty.`;
      }
      return null;
    }
    case "num":
      if (typeof value !== "number") return `Field '${name}' must be a number.`;
      return value > rule[1] && value <= rule[2] ? null : `Field '${name}' is out of range.`;
    case "int":
      if (typeof value !== "number" || !Number.isInteger(value)) return `Field '${name}' must be an integer.`;
      return value >= rule[1] && value <= rule[2] ? null : `Field '${name}' is out of range.`;
    case "enum":
      return typeof value === "string" && rule[1].includes(value)
        ? null
        : `Field '${name}' must be one of: ${rule[1].join(", ")}.`;
    case "format":
      if (typeof value !== "string") return `Field '${name}' must be a string.`;
      return rule[1].test(value) ? null : `Field '${name}' must be ${rule[2]}.`;
    case "object": {
      if (typeof value !== "object" || value === null || Array.isArray(value)) return `Field '${name}' must be an object.`;
      const inner = value as Record<string, unknown>;
      for (const [field, [fieldRule, flag]] of Object.entries(rule[1])) {
        const problem = fieldProblem(`${name}.${field}`, inner[field], fieldRule, flag);
        if (problem) return problem;
      }
      return null;
    }
  }
}

function visibleProblem(name: string, text: string): string | null {
  if (hasVisibleText(text)) return null;
  if (BLANK.test(text)) return `Field '${name}' must not be empty.`;
  return `Field '${name}' must contain visible text, not only invisible or control characters.`;
}

function pickText(obj: Record<string, unknown>): [string | null, string | null] {
  const message = (obj.message ?? null) as string | null;
  const context = (obj.context ?? null) as string | null;
  if (message !== null && context !== null && message !== context) {
    return [null, "Give the text in 'message' or in 'context', not both."];
  }
  const text = message ?? context;
  if (text === null) return [null, null];
  return [text, visibleProblem(message !== null ? "message" : "context", text)];
}

function typeProblem(type: string, obj: Record<string, unknown>): string | null {
  switch (type) {
    case "speak": {
      const [text, problem] = pickText(obj);
      if (problem) return problem;
      const instructions = (obj.instructions ?? null) as string | null;
      if (text !== null && instructions !== null) return "Give either the text to say or 'instructions', not both.";
      if (obj.audio !== undefined && obj.audio !== null) {
        // v1.3: a clip needs no text (given, it is the clip's transcript)
        return instructions !== null ? "Give either an audio clip or 'instructions', not both." : null;
      }
      if (text === null && instructions === null) return "Missing field 'message' (or 'context'): the text to speak.";
      if (instructions !== null) {
        const invisible = visibleProblem("instructions", instructions);
        if (invisible) return invisible;
      }
      const mode = obj.mode ?? null;
      if (obj.interrupt === true && mode !== null && mode !== "interrupt") {
        return `'interrupt: true' contradicts 'mode: ${String(mode)}'.`;
      }
      return null;
    }
    case "add_context": {
      const [text, problem] = pickText(obj);
      if (problem) return problem;
      return text === null ? "Missing field 'context' (or 'message'): the context to add." : null;
    }
    case "update_io":
      return [obj.agent_audio, obj.user_audio, obj.transcription].every((v) => v === undefined || v === null)
        ? "Give at least one of 'agent_audio', 'user_audio' or 'transcription'."
        : null;
    case "update_instructions":
      return visibleProblem("instructions", obj.instructions as string);
    case "user_message":
      return visibleProblem("text", obj.text as string);
    default:
      return null;
  }
}

/**
 * The request as it will be sent: a copy with an id (32 hex digits unless given) and, when
 * `agentCode` is given and the request names none, that code; validated.
 *
 * @throws ContextError `VALIDATION_ERROR` (not retryable) with the agent's own sentence.
 */
export function prepareRequest(request: RequestInput, options: { agentCode?: string } = {}): Record<string, unknown> {
  const obj: Record<string, unknown> = { ...request };
  if (obj.id === undefined || obj.id === null) obj.id = newRequestId();
  if (options.agentCode !== undefined && (obj.agent_code === undefined || obj.agent_code === null)) {
    obj.agent_code = options.agentCode;
  }
  const problem = requestProblem(obj);
  if (problem !== null) {
    throw new ContextError("VALIDATION_ERROR", problem, { requestId: requestIdOf(obj), retryable: false });
  }
  return obj;
}

/**
 * Refuses a payload that does not fit one packet.
 *
 * @throws ContextError `PAYLOAD_TOO_LARGE`.
 */
export function checkSize(payload: string, requestId: string | null): void {
  const size = utf8Length(payload);
  if (size > MAX_PAYLOAD_BYTES) {
    throw new ContextError(
      "PAYLOAD_TOO_LARGE",
      `The message is ${size} bytes once encoded; the limit is ${MAX_PAYLOAD_BYTES} bytes.`,
      { requestId, retryable: false },
    );
  }
}

/** The fields a caller gave: `undefined` and `null` mean "not given" (the agent's default). */
export function given<T extends Record<string, unknown>>(fields: T): Partial<T> {
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(fields)) if (value !== undefined && value !== null) out[name] = value;
  return out as Partial<T>;
}
