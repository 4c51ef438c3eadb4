"""Speech tracking: ``speech_started`` / ``speech_finished`` for every speech a message started.

``speech_started`` goes out when the speech's playout really begins (the agent is speaking and
it is the current speech, checked on each state change and each playout segment), not when it
is queued; ``speech_finished`` when its handle is done, with what the audio output reported
(``played_s``) and whether the model or the TTS failed. A speech still going when the plugin
stops ends with ``reason: "shutdown"``: its sender may be waiting for playout.

v1.1: a speech can be cancelled by its sender's ``cancel`` (or dropped by an ``end_call``) and
then ends with ``cancelled: true``; a speech sent with ``end_call_after`` hangs up once it has
played out in full, or, cut by the user, ends with ``call_kept: true`` and the call goes on.

With an avatar, ``played_s`` is what the avatar reported playing, and a speech cut because the
avatar left the room (``AvatarWatch``) ends with ``reason: "avatar_left"`` and no ``played_s``:
the position LiveKit then reports is only what had been sent to the avatar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from livekit.agents import tts

from ..protocol import ServerMessage, SpeechFinishedEvent, SpeechStartedEvent, utc_timestamp
from .jobs import Job

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession, SpeechHandle
    from livekit.agents.voice.events import AgentStateChangedEvent, ErrorEvent
    from livekit.agents.voice.io import AudioOutput, PlaybackFinishedEvent, PlaybackStartedEvent


@dataclass(eq=False)
class _SpeechTrack:
    request_id: str | None
    sender: str | None
    owner: str | None  # who may cancel it (the signed sender, else the relay): ``Job.owner``
    handle: SpeechHandle
    started: bool = False
    played_s: float | None = None
    tts_failed: bool = False
    cancelled: bool = False
    end_call_after: bool = False
    avatar_left: bool = False  # cut because the avatar playing it left: nobody heard the rest


def _no_hang_up() -> None:
    return None


class SpeechTracker:
    """Follows the speeches messages started and reports their playout to their senders.

    Args:
        session: The agent session the speeches play in.
        send: Queues an event for a sender (``Outbox.send``).
        hang_up: Ends the call once a speech sent with ``end_call_after`` has played out.
    """

    def __init__(
        self,
        session: AgentSession[Any],
        send: Callable[[str | None, ServerMessage], None],
        hang_up: Callable[[], None] = _no_hang_up,
    ) -> None:
        self._session = session
        self._send = send
        self._hang_up = hang_up
        self._tracks: dict[str, _SpeechTrack] = {}
        self._watched_audio: AudioOutput | None = None
        # speeches cut for the avatar before they were tracked (as LiveKit created them)
        self._avatar_cuts: set[str] = set()

    def track(self, handle: SpeechHandle, job: Job, *, end_call_after: bool = False) -> None:
        """Report ``handle``'s playout to the sender of ``job`` (and hang up after it)."""
        self._tracks[handle.id] = _SpeechTrack(
            job.request.id,
            job.sender,
            job.owner,
            handle,
            end_call_after=end_call_after,
            avatar_left=handle.id in self._avatar_cuts,
        )
        self._avatar_cuts.discard(handle.id)
        self.watch_audio_output()
        handle.add_done_callback(self._on_speech_done)
        self._check_started()

    def pending(self) -> list[str]:
        """Ids of the tracked speeches not yet done (queued or playing)."""
        return [speech_id for speech_id, t in self._tracks.items() if not t.handle.done()]

    def any_pending(self) -> bool:
        return any(not track.handle.done() for track in self._tracks.values())

    def cancel(
        self, owner: str | None, request_id: str
    ) -> tuple[str, Literal["queued", "playing"]] | None:
        """Cut or unqueue the speech ``owner`` started with ``request_id`` (whatever its
        ``allow_interruptions``): its speech id and whether it was playing, or None if there
        is no such speech still going."""
        for track in self._tracks.values():
            handle = track.handle
            if track.request_id == request_id and track.owner == owner and not handle.done():
                current = self._session.current_speech
                where: Literal["queued", "playing"] = (
                    "playing" if current is not None and current.id == handle.id else "queued"
                )
                track.cancelled = True
                handle.interrupt(force=True)
                return handle.id, where
        return None

    def cancel_all(self) -> None:
        """Cut and unqueue every tracked speech still going (the call is ending now)."""
        for track in self._tracks.values():
            if not track.handle.done():
                track.cancelled = True
                track.handle.interrupt(force=True)

    def cut_for_avatar(self, handle: SpeechHandle) -> None:
        """Cut ``handle`` (whatever its ``allow_interruptions``): the avatar that would play it
        has left. A tracked speech then ends with ``reason: "avatar_left"``."""
        if handle.done():
            return
        track = self._tracks.get(handle.id)
        if track is not None:
            track.avatar_left = True
        else:  # not tracked (yet): remembered until it is, or until it is done
            self._avatar_cuts.add(handle.id)
            handle.add_done_callback(self._forget_avatar_cut)
        handle.interrupt(force=True)

    def cut_all_for_avatar(self) -> int:
        """Cut every tracked speech still going, for the avatar left; how many were cut."""
        going = [track.handle for track in self._tracks.values() if not track.handle.done()]
        for handle in going:
            self.cut_for_avatar(handle)
        return len(going)

    def _forget_avatar_cut(self, handle: SpeechHandle) -> None:
        self._avatar_cuts.discard(handle.id)

    def finish_all(self) -> None:
        """At shutdown: end every tracked speech with an event, even one still playing."""
        for track in list(self._tracks.values()):
            track.handle.remove_done_callback(self._on_speech_done)
            self._finish(track, shutdown=not track.handle.done())
        self._tracks.clear()

    # ------------------------------------------------------------------------------------------
    # session listeners (hooked by ContextPlugin)

    def on_agent_state_changed(self, ev: AgentStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            self._check_started()

    def on_session_error(self, ev: ErrorEvent) -> None:
        # a TTS failure is recorded nowhere on the handle: mark the speech playing now
        if isinstance(ev.error, tts.TTSError) and not ev.error.recoverable:
            track = self._current()
            if track is not None:
                track.tts_failed = True

    # ------------------------------------------------------------------------------------------
    # audio output

    def watch_audio_output(self) -> None:
        # the session's audio output can be set or swapped after start() (RoomIO sets it when
        # the session starts), so the listener follows it
        audio = self._session.output.audio
        if audio is self._watched_audio:
            return
        self.unwatch_audio_output()
        if audio is not None:
            audio.on("playback_started", self._on_playback_started)
            audio.on("playback_finished", self._on_playback_finished)
        self._watched_audio = audio

    def unwatch_audio_output(self) -> None:
        if self._watched_audio is not None:
            self._watched_audio.off("playback_started", self._on_playback_started)
            self._watched_audio.off("playback_finished", self._on_playback_finished)
            self._watched_audio = None

    def _on_playback_started(self, _: PlaybackStartedEvent) -> None:
        # back-to-back speeches keep the agent "speaking", so each segment start is checked too
        self._check_started()

    def _on_playback_finished(self, ev: PlaybackFinishedEvent) -> None:
        track = self._current()
        # once the avatar left, the position LiveKit reports is what was sent, not what played
        if track is not None and not track.avatar_left:
            track.played_s = round(ev.playback_position, 3)

    # ------------------------------------------------------------------------------------------

    def _current(self) -> _SpeechTrack | None:
        current = self._session.current_speech
        return self._tracks.get(current.id) if current is not None else None

    def _check_started(self) -> None:
        if self._session.agent_state != "speaking":
            return
        track = self._current()
        if track is None or track.started:
            return
        track.started = True
        self._send(
            track.sender,
            SpeechStartedEvent(
                id=track.request_id, speech_id=track.handle.id, timestamp=utc_timestamp()
            ),
        )

    def _on_speech_done(self, handle: SpeechHandle) -> None:
        track = self._tracks.pop(handle.id, None)
        if track is None:
            return
        if not track.end_call_after:
            self._finish(track, shutdown=False)
            return
        # hang up only after a full playout: cut (by the user, a cancel) or failed, keep the call
        played_out = not handle.interrupted and handle.exception() is None and not track.tts_failed
        self._finish(track, shutdown=False, call_kept=not played_out)
        if played_out:
            self._hang_up()

    def _finish(self, track: _SpeechTrack, *, shutdown: bool, call_kept: bool = False) -> None:
        """Send ``speech_finished``; ``shutdown``: the plugin stops before the speech ended."""
        handle = track.handle
        reason: Literal["shutdown", "avatar_left"] | None = None
        if shutdown:
            # the end was not observed: the sender must not take it for a full playout
            interrupted, failed, reason = True, False, "shutdown"
        else:
            # LLM failures are recorded on the handle; a TTS failure only as a session error
            interrupted = handle.interrupted
            failed = handle.exception() is not None or track.tts_failed
            if track.avatar_left:
                interrupted, reason = True, "avatar_left"
        self._send(
            track.sender,
            SpeechFinishedEvent(
                id=track.request_id,
                speech_id=handle.id,
                interrupted=interrupted,
                played_s=None if track.avatar_left else track.played_s,
                failed=True if failed else None,
                reason=reason,
                cancelled=True if track.cancelled else None,
                call_kept=True if call_kept else None,
                timestamp=utc_timestamp(),
            ),
        )
