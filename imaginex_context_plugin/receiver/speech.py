"""Speech tracking: ``speech_started`` and exactly one terminal event for every speech a message
started.

``speech_started`` goes out when the speech's playout really begins (the agent is speaking and
it is the current speech, checked on each state change and each playout segment), not when it
is queued. The end is one terminal event, sent when the speech's handle is done (or when the
plugin stops first):

- ``speech_finished``: it played, in full or cut by the user or an ``interrupt`` (``played_s``:
  what the audio output reported);
- v1.3, ``speech_failed{reason}``: ``not_started`` (it had not begun ``start_within_s`` after
  it was applied: it is cancelled and never plays late), ``tts_error``, ``llm_error``,
  ``session_closed`` (the session, or the plugin, stopped first), ``cancelled`` (a ``cancel``,
  an ``end_call``, or an ``interrupt`` that emptied the queue before it began),
  ``avatar_left`` (the avatar playing it left the room: nobody heard the rest).

A sender that did not say it speaks v1.3 (``protocol``) gets every end as the v1.2
``speech_finished``, its flags saying which (``failed``, ``cancelled``, ``reason:
"shutdown"`` / ``"avatar_left"``), so its waits behave as before. Both forms carry the same
``seq``; subscribers of ``speech`` get the v1.3 form of every tracked speech.

v1.1: a speech sent with ``end_call_after`` hangs up once it has played out in full; cut by the
user, it ends with ``call_kept: true`` and the call goes on (failed, it never hangs up).

With an avatar, ``played_s`` is what the avatar reported playing, and a speech cut because the
avatar left the room (``AvatarWatch``) has no ``played_s``: the position LiveKit then reports is
only what had been sent to the avatar.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from livekit.agents import tts

from ..log import logger
from ..protocol import (
    PendingSpeech,
    SpeechFailedEvent,
    SpeechFailureReason,
    SpeechFinishedEvent,
    SpeechStartedEvent,
)
from .jobs import Job
from .subscribers import Subscribers

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
    v1_3: bool  # the sender speaks v1.3: speech_failed, not a flagged speech_finished
    started: bool = False
    played_s: float | None = None
    tts_failed: bool = False
    cancelled: bool = False
    not_started: bool = False
    end_call_after: bool = False
    deadline: asyncio.TimerHandle | None = None
    avatar_left: bool = False  # cut because the avatar playing it left: nobody heard the rest


def _no_hang_up() -> None:
    return None


class SpeechTracker:
    """Follows the speeches messages started and reports their playout to their senders.

    Args:
        session: The agent session the speeches play in.
        events: Numbers, keeps and sends every event (to the sender, and to subscribers of
            ``speech``).
        hang_up: Ends the call once a speech sent with ``end_call_after`` has played out.
    """

    def __init__(
        self,
        session: AgentSession[Any],
        events: Subscribers,
        hang_up: Callable[[], None] = _no_hang_up,
    ) -> None:
        self._session = session
        self._events = events
        self._hang_up = hang_up
        self._tracks: dict[str, _SpeechTrack] = {}
        self._watched_audio: AudioOutput | None = None
        # speeches cut for the avatar before they were tracked (as LiveKit created them)
        self._avatar_cuts: set[str] = set()

    def track(
        self,
        handle: SpeechHandle,
        job: Job,
        *,
        end_call_after: bool = False,
        start_within_s: float | None = None,
    ) -> None:
        """Report ``handle``'s playout to the sender of ``job`` (and hang up after it).

        ``start_within_s``: cancel the speech if it has not started playing by then.
        """
        track = _SpeechTrack(
            job.request.id,
            job.sender,
            job.owner,
            handle,
            v1_3=job.request.speaks_v1_3,
            end_call_after=end_call_after,
            avatar_left=handle.id in self._avatar_cuts,
        )
        self._avatar_cuts.discard(handle.id)
        self._tracks[handle.id] = track
        if start_within_s is not None:
            track.deadline = asyncio.get_running_loop().call_later(
                start_within_s, self._start_missed, track
            )
        self.watch_audio_output()
        handle.add_done_callback(self._on_speech_done)
        self._check_started()

    def pending(self) -> list[str]:
        """Ids of the tracked speeches not yet done (queued or playing)."""
        return [speech_id for speech_id, t in self._tracks.items() if not t.handle.done()]

    def pending_details(self) -> list[PendingSpeech]:
        """The tracked speeches not yet done, with their request and whether they play now."""
        current = self._session.current_speech
        return [
            PendingSpeech(
                speech_id=speech_id,
                request_id=track.request_id,
                playing=current is not None and current.id == speech_id,
            )
            for speech_id, track in self._tracks.items()
            if not track.handle.done()
        ]

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

    def finish_all(self, *, shutdown: bool = True) -> None:
        """End every tracked speech with its event, even one still playing: the plugin stops
        (``shutdown``), or the session closed (its handles may end after its last event)."""
        for track in list(self._tracks.values()):
            track.handle.remove_done_callback(self._on_speech_done)
            if track.deadline is not None:
                track.deadline.cancel()
                track.deadline = None
            if not track.handle.done():
                self._failed(track, "session_closed", shutdown=shutdown)
            elif (reason := self._failure(track)) is not None:
                self._failed(track, reason)
            else:
                self._finish(track)
        self._tracks.clear()

    def on_session_close(self, _: object) -> None:
        self.finish_all(shutdown=False)

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
        if track is None or track.started or track.not_started:
            return
        track.started = True
        if track.deadline is not None:
            track.deadline.cancel()
            track.deadline = None
        self._events.publish(
            SpeechStartedEvent(
                **self._events.log.stamped(), id=track.request_id, speech_id=track.handle.id
            ),
            kind="speech",
            to=track.sender,
        )

    def _start_missed(self, track: _SpeechTrack) -> None:
        """``start_within_s`` has passed: a speech that has not begun is cancelled for good."""
        track.deadline = None
        if track.started or track.handle.done():
            return
        track.not_started = True
        logger.info(
            "speech did not start in time and was cancelled",
            extra={"request_id": track.request_id, "speech_id": track.handle.id},
        )
        track.handle.interrupt(force=True)

    def _on_speech_done(self, handle: SpeechHandle) -> None:
        track = self._tracks.pop(handle.id, None)
        if track is None:
            return
        if track.deadline is not None:
            track.deadline.cancel()
            track.deadline = None
        reason = self._failure(track)
        if reason is not None:
            self._failed(track, reason)  # a failed speech never hangs up
            return
        if not track.end_call_after:
            self._finish(track)
            return
        # hang up only after a full playout: cut by the user, keep the call
        played_out = not handle.interrupted
        self._finish(track, call_kept=not played_out)
        if played_out:
            self._hang_up()

    def _failure(self, track: _SpeechTrack) -> SpeechFailureReason | None:
        """Why the done speech failed, or None if it played (in full or cut while playing)."""
        handle = track.handle
        if track.not_started:
            return "not_started"
        if track.cancelled:
            return "cancelled"
        if track.avatar_left:
            return "avatar_left"
        if track.tts_failed:
            return "tts_error"
        if handle.exception() is not None:
            return "llm_error"
        if handle.interrupted and _closing(self._session):
            return "session_closed"
        if handle.interrupted and not track.started:
            return "cancelled"  # an interrupt emptied the queue before it began
        return None

    def _finish(self, track: _SpeechTrack, *, call_kept: bool = False) -> None:
        """``speech_finished``: the speech played, in full or cut while playing."""
        handle = track.handle
        event = SpeechFinishedEvent(
            **self._events.log.stamped(),
            id=track.request_id,
            speech_id=handle.id,
            interrupted=handle.interrupted,
            played_s=track.played_s,
            call_kept=True if call_kept else None,
        )
        self._events.publish(event, kind="speech", to=track.sender)

    def _failed(
        self, track: _SpeechTrack, reason: SpeechFailureReason, *, shutdown: bool = False
    ) -> None:
        """``speech_failed`` (a v1.2 sender: the ``speech_finished`` it knows, flagged)."""
        handle = track.handle
        stamp = self._events.log.stamped()
        event = SpeechFailedEvent(
            **stamp,
            id=track.request_id,
            speech_id=handle.id,
            reason=reason,
            started=track.started,
            played_s=None if track.avatar_left else track.played_s,
        )
        legacy: SpeechFinishedEvent | None = None
        if not track.v1_3:
            legacy = SpeechFinishedEvent(
                **stamp,
                id=track.request_id,
                speech_id=handle.id,
                # the end of a speech cut at the close was not observed: not a full playout
                interrupted=(
                    True if reason in ("session_closed", "avatar_left") else handle.interrupted
                ),
                played_s=None if track.avatar_left else track.played_s,
                failed=True if reason in ("tts_error", "llm_error") else None,
                reason="shutdown" if shutdown else "avatar_left" if track.avatar_left else None,
                cancelled=True if reason in ("cancelled", "not_started") else None,
                call_kept=True if track.end_call_after and not shutdown else None,
            )
        self._events.publish(event, kind="speech", to=track.sender, direct=legacy)


def _closing(session: AgentSession[Any]) -> bool:
    """Whether the session is closing (read defensively: LiveKit keeps it private)."""
    is_closing = getattr(session, "_is_closing", None)
    try:
        return bool(is_closing()) if callable(is_closing) else False
    except Exception:
        return False
