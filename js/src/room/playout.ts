/**
 * Waiting for a speech this client requested to start or finish (Python: sender/waiters.py's
 * playout waits). The events themselves are matched by `Playouts`; a wait that runs out asks the
 * agent whether it still has the speech, so that its `PlayoutTimeoutError` says why (`why`).
 */
import { PlayoutTimeoutError, SpeechFailedError, type PlayoutWait } from "../errors.js";
import type { AgentStateInfo, SpeechFinishedEvent, SpeechStartedEvent, SuccessAck } from "../generated/wire.js";
import type { Playouts } from "./waiters.js";

/** What `speak` resolves with: the ack, and the speech's playout as promises. */
export interface Speech {
  readonly id: string;
  readonly ack: SuccessAck;
  /** Resolves when the speech starts playing (`speech_started`). */
  started(options?: { timeoutMs?: number }): Promise<SpeechStartedEvent>;
  /**
   * Resolves when it has played out or was cut (`speech_finished`: `interrupted`, `played_s`);
   * rejects with `SpeechFailedError` when it did not play (v1.3 `speech_failed`, its `reason`).
   */
  finished(options?: { timeoutMs?: number }): Promise<SpeechFinishedEvent>;
}

/** What the waits need of their client. */
export interface PlayoutHooks {
  /** The wait when the caller names none (the client's `playoutTimeoutMs`). */
  readonly timeoutMs: number;
  /** Throws when the client is closed. */
  ensureOpen(): void;
  /** The agent's state (`getState`), or null when it cannot be asked now. */
  agentState(): Promise<AgentStateInfo> | null;
}

const WHY: Record<PlayoutWait, string> = {
  pending: "the agent still has it queued or playing.",
  lost: "the agent no longer has it: its end was sent but did not arrive here.",
  unknown: "whether the agent still has it could not be asked.",
};

export class SpeechWaits {
  constructor(
    private readonly playouts: Playouts,
    private readonly hooks: PlayoutHooks,
  ) {}

  /** The `Speech` a `speak` acknowledged as `ack` resolves with. */
  speech(id: string, ack: SuccessAck): Speech {
    return {
      id,
      ack,
      started: (o = {}) => this.wait<SpeechStartedEvent>(id, "speech_started", o.timeoutMs, ack),
      finished: (o = {}) => this.wait<SpeechFinishedEvent>(id, "speech_finished", o.timeoutMs, ack),
    };
  }

  /** The speech's event of `type`; its errors carry `accepted`, the ack (null: not known here). */
  wait<T extends SpeechStartedEvent | SpeechFinishedEvent>(
    requestId: string,
    type: T["type"],
    timeoutMs: number | undefined,
    accepted: SuccessAck | null,
  ): Promise<T> {
    try {
      this.hooks.ensureOpen();
    } catch (error) {
      return Promise.reject(error);
    }
    const wait = timeoutMs ?? this.hooks.timeoutMs;
    const what = type === "speech_started" ? "start" : "finish";
    const timedOut = new PlayoutTimeoutError("", { requestId, accepted });
    return this.playouts.wait<T>(requestId, type, wait, () => timedOut).catch(async (error: unknown) => {
      if (error !== timedOut) {
        if (error instanceof SpeechFailedError && accepted !== null) throw new SpeechFailedError(error.event, { accepted });
        throw error;
      }
      const why = await this.whyUnfinished(requestId);
      throw new PlayoutTimeoutError(`The speech did not ${what} within ${wait / 1000} s; ${WHY[why]}`, { requestId, accepted, why });
    });
  }

  /** Asks the agent whether the speech of `requestId` is still queued or playing. */
  private async whyUnfinished(requestId: string): Promise<PlayoutWait> {
    const speechId = this.playouts.speechId(requestId);
    if (speechId === undefined) return "unknown";
    let state: AgentStateInfo;
    try {
      const asked = this.hooks.agentState();
      if (asked === null) return "unknown";
      state = await asked;
    } catch {
      return "unknown";
    }
    if (state.pending_speeches.includes(speechId)) return "pending";
    return state.pending_speeches_truncated ? "unknown" : "lost";
  }
}
