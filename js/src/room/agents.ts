/**
 * Which participant is the agent (Python: _livekit/agents.py), among the room's participants
 * that are neither senders (`imaginex.sender`) nor avatars (`lk.publish_on_behalf`: a bitHuman
 * avatar joins as kind AGENT, naming the agent it speaks for):
 *
 * 1. with an agent code: the participant publishing that code (`imaginex.agent_code`);
 * 2. without one: the participant of kind AGENT or publishing any code; among several, the only
 *    one publishing a code wins;
 * 3. when more than one still matches, nobody is chosen: `AGENT_NOT_FOUND` naming them all
 *    (sending to one at random could speak in the wrong voice, to all could speak twice).
 */
import { ContextError } from "../errors.js";
import { AGENT_CODE_ATTRIBUTE, PUBLISH_ON_BEHALF_ATTRIBUTE, SENDER_ATTRIBUTE } from "../protocol.js";

/** LiveKit's ParticipantKind.AGENT. */
export const AGENT_KIND = 4;

export interface Candidate {
  identity: string;
  kind: number;
  attributes: Readonly<Record<string, string>>;
}

/**
 * The identity of the one agent among `candidates`, or null when there is none.
 *
 * @throws ContextError `AGENT_NOT_FOUND` (not retryable) when more than one matches.
 */
export function chooseAgent(
  candidates: Iterable<Candidate>,
  options: { agentCode?: string | null; room: string; exclude?: readonly string[] },
): string | null {
  const exclude = options.exclude ?? [];
  const code = options.agentCode ?? null;
  const people = [...candidates].filter(
    (p) =>
      !(SENDER_ATTRIBUTE in p.attributes) &&
      !(PUBLISH_ON_BEHALF_ATTRIBUTE in p.attributes) &&
      !exclude.includes(p.identity),
  );
  let matches: string[];
  if (code !== null) {
    matches = people.filter((p) => p.attributes[AGENT_CODE_ATTRIBUTE] === code).map((p) => p.identity);
  } else {
    matches = people.filter((p) => p.kind === AGENT_KIND || AGENT_CODE_ATTRIBUTE in p.attributes).map((p) => p.identity);
    const withCode = people.filter((p) => AGENT_CODE_ATTRIBUTE in p.attributes).map((p) => p.identity);
    if (matches.length > 1 && withCode.length === 1) matches = withCode;
  }
  if (matches.length > 1) {
    const which = code !== null ? `with agent code '${code}' ` : "";
    const fix =
      code === null
        ? "pass agent_code or agent_identity to choose one."
        : "give each agent its own code, or pass agent_identity to choose one.";
    const names = [...matches].sort(byCodePoint).join(", ");
    throw new ContextError("AGENT_NOT_FOUND", `More than one agent ${which}is in room '${options.room}' (${names}); ${fix}`, {
      retryable: false,
    });
  }
  return matches[0] ?? null;
}

/** Python's sorted(): by code point, not by locale. */
function byCodePoint(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
