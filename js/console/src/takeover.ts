/**
 * Taking a call over by voice and handing it back.
 *
 * Take over: the gateway mints a token for this call's room only (publish a microphone,
 * listen, no data: the agent can never take the operator's packets for a control), the agent
 * is muted and stops listening (update-io) and cut off (interrupt), then the operator's
 * microphone joins the room and the operator hears the caller. Hand back: the microphone
 * leaves, the agent's switches go back to what they were, and (if asked) the agent is told as
 * context that a human spoke meanwhile. livekit-client is loaded only here, on first use.
 */
import type { Room } from "livekit-client";
import type { IOState } from "../../src/generated/wire.js";
import type { ConsoleApi } from "./api.js";
import { send, type CallTarget } from "./controls.js";
import { clock, h } from "./dom.js";

export const TAKEOVER_CONTEXT_KEY = "imaginex.console.takeover";

export class Takeover {
  private room: Room | null = null;
  private meterTimer: ReturnType<typeof setInterval> | undefined;
  private audioContext: AudioContext | null = null;
  private readonly sinks = h("div", { class: "sinks", attrs: { hidden: true } });
  private readonly startedAt = new Date();
  identity = "";

  private constructor(
    private readonly target: CallTarget,
    private readonly restore: IOState,
    private readonly meter: HTMLMeterElement,
  ) {}

  /**
   * Take the call over. Returns null when it could not be done (each failed step is in the
   * activity log, and whatever was already switched is switched back).
   */
  static async start(api: ConsoleApi, target: CallTarget, io: IOState, meter: HTMLMeterElement, host: HTMLElement): Promise<Takeover | null> {
    const takeover = new Takeover(target, io, meter);
    host.append(takeover.sinks);
    const entry = target.activity.start("Take over", "the operator's microphone joins the call");
    let token;
    try {
      token = await api.takeover(target.agentCode, target.room);
    } catch (error) {
      entry.fail(error);
      target.unauthorized(error);
      return null;
    }
    takeover.identity = token.identity;
    // the agent stops at once; the microphone joins meanwhile
    const [muted, joined] = await Promise.all([
      send(target, "Mute the agent and stop it listening", null, (id) => target.gateway.updateIO(target.agentCode, { agent_audio: false, user_audio: false, room_id: target.room }, { idempotencyKey: id })),
      takeover.join(token.url, token.token).then(
        () => null,
        (error: unknown) => error,
      ),
    ]);
    if (muted) await send(target, "Interrupt", "whatever the agent was saying", (id) => target.gateway.interrupt(target.agentCode, { force: true, room_id: target.room }, { idempotencyKey: id }));
    if (joined !== null || !muted) {
      entry.fail(joined ?? new Error("the agent could not be muted"));
      await takeover.leave();
      if (muted) await takeover.switchBack();
      return null;
    }
    entry.ok(`live as ${token.identity}: the caller hears you`);
    return takeover;
  }

  private async join(url: string, token: string): Promise<void> {
    const { Room, RoomEvent, Track } = await import("livekit-client");
    const room = new Room({ adaptiveStream: false, dynacast: false });
    this.room = room;
    room.on(RoomEvent.TrackSubscribed, (track) => {
      if (track.kind === Track.Kind.Audio) this.sinks.append(track.attach());
    });
    room.on(RoomEvent.TrackUnsubscribed, (track) => track.detach().forEach((element) => element.remove()));
    await room.connect(url, token, { autoSubscribe: true });
    const publication = await room.localParticipant.setMicrophoneEnabled(true);
    const track = publication?.track?.mediaStreamTrack;
    if (track) this.watchLevel(track);
  }

  /** The microphone's level on the meter, so the operator sees it is live. */
  private watchLevel(track: MediaStreamTrack): void {
    const context = new AudioContext();
    this.audioContext = context;
    const analyser = context.createAnalyser();
    analyser.fftSize = 512;
    context.createMediaStreamSource(new MediaStream([track])).connect(analyser);
    const samples = new Float32Array(analyser.fftSize);
    this.meterTimer = setInterval(() => {
      analyser.getFloatTimeDomainData(samples);
      let sum = 0;
      for (const sample of samples) sum += sample * sample;
      this.meter.value = Math.min(1, Math.sqrt(sum / samples.length) * 4);
    }, 100);
  }

  /** Whether the operator's microphone is published in the room now. */
  get live(): boolean {
    return Boolean(this.room?.localParticipant.isMicrophoneEnabled);
  }

  /** Hand the call back to the agent; `tellAgent`: add as context that a human spoke. */
  async handBack(tellAgent: boolean): Promise<void> {
    await this.leave();
    this.target.activity.notice("The operator's microphone left the call");
    await this.switchBack();
    if (tellAgent) {
      const context = `A human operator spoke with the user on this call from ${clock(this.startedAt)} to ${clock(new Date())}; you did not hear that part. Continue the conversation from here, without repeating what the operator settled.`;
      await send(this.target, "Tell the agent a human spoke", context, (id) => this.target.gateway.addContext(this.target.agentCode, { context, key: TAKEOVER_CONTEXT_KEY, room_id: this.target.room }, { idempotencyKey: id }));
    }
  }

  private async switchBack(): Promise<void> {
    const { agent_audio, user_audio } = this.restore;
    await send(this.target, "Give the agent its voice and ears back", null, (id) => this.target.gateway.updateIO(this.target.agentCode, { agent_audio, user_audio, room_id: this.target.room }, { idempotencyKey: id }));
  }

  private async leave(): Promise<void> {
    clearInterval(this.meterTimer);
    this.meter.value = 0;
    await this.audioContext?.close().catch(() => {});
    this.audioContext = null;
    const room = this.room;
    this.room = null;
    if (room) {
      await room.localParticipant.setMicrophoneEnabled(false).catch(() => {});
      await room.disconnect();
    }
    this.sinks.replaceChildren();
  }
}
