/**
 * Finding the agent participant in the room, waiting for it to join (Python: sender/locator.py;
 * the rule: agents.ts).
 */
import type { Room } from "livekit-client";
import { ContextError } from "../errors.js";
import { within } from "../retry.js";
import { chooseAgent } from "./agents.js";

export class AgentLocator {
  /** Settled at the next roster change, for every call waiting then (then a fresh one). */
  private nextChange = change();

  constructor(
    private readonly room: Room,
    private readonly options: {
      /** Send to this participant; it only has to be in the room. */
      agentIdentity: string | undefined;
      /** Else, the code the agent publishes. */
      agentCode: string | undefined;
      /** Default milliseconds to wait for the agent to appear. */
      timeoutMs: number;
      /** Throws when the client has been closed meanwhile. */
      ensureOpen: () => void;
    },
  ) {}

  /** Someone joined, left or changed attributes (or the client closed): look again. */
  changed(): void {
    const now = this.nextChange;
    this.nextChange = change();
    now.settle();
  }

  /** The agent's identity, waiting up to `timeoutMs` (default: the client's `agentTimeoutMs`). */
  async resolve(timeoutMs?: number): Promise<string> {
    const wait = timeoutMs ?? this.options.timeoutMs;
    const deadline = Date.now() + wait;
    for (;;) {
      this.options.ensureOpen();
      // taken before looking, so a change after the look wakes us
      const roster = this.nextChange.settled;
      let ambiguous: ContextError | null = null;
      let found: string | null = null;
      try {
        found = this.match();
      } catch (error) {
        if (!(error instanceof ContextError)) throw error;
        ambiguous = error; // may resolve itself: an agent publishes its code a moment after joining
      }
      if (found !== null) return found;
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw ambiguous ?? new ContextError("AGENT_NOT_FOUND", this.noAgentMessage(wait), { retryable: false });
      await within(roster, remaining);
    }
  }

  private match(): string | null {
    const participants = this.room.remoteParticipants;
    const identity = this.options.agentIdentity;
    if (identity !== undefined) return participants.has(identity) ? identity : null;
    return chooseAgent(
      [...participants.values()].map((p) => ({ identity: p.identity, kind: p.kind as number, attributes: p.attributes ?? {} })),
      { agentCode: this.options.agentCode ?? null, room: this.room.name },
    );
  }

  private noAgentMessage(waitedMs: number): string {
    const { agentIdentity, agentCode } = this.options;
    const room = this.room.name;
    const waited = `waited ${waitedMs / 1000} s`;
    if (agentIdentity !== undefined) return `Participant '${agentIdentity}' is not in room '${room}' (${waited}).`;
    if (agentCode !== undefined) {
      return (
        `No participant with agent code '${agentCode}' is in room '${room}' (${waited}); ` +
        "the agent publishes its code once ContextPlugin(agent_code=...) has started."
      );
    }
    return `No agent participant is in room '${room}' (${waited}).`;
  }
}

function change(): { settled: Promise<void>; settle: () => void } {
  let settle!: () => void;
  const settled = new Promise<void>((resolve) => (settle = resolve));
  return { settled, settle };
}
