"""The agent's avatar: speech that nobody can hear once the avatar has left the room.

With an avatar (a bitHuman avatar, or any of LiveKit's avatar plugins in its cloud form), the
agent's audio leaves over a LiveKit data stream (``DataStreamAudioOutput``) to the avatar's own
participant, which plays it and reports the end of each segment back over RPC; a speech is done
only once that report came. If the avatar leaves or crashes, the report never comes: on
livekit-agents 1.8.9 the speech playing then never ends, every speech after it is streamed to
nobody and never ends either, and an avatar that joins again does not unblock them (seen on the
real server). The session stays speechless for the rest of the call.

So, while the session's audio goes to an avatar (a ``DataStreamAudioOutput`` in the chain of
``session.output.audio``) and is not muted:

- when an avatar of ours leaves, every speech playing or queued is cut
  (``session.interrupt(force=True)``); the plugin's own end with ``interrupted: true``,
  ``reason: "avatar_left"`` and no ``played_s`` (nobody reported what was played);
- until an avatar of ours is back, a message asking for speech is refused with ``NOT_READY``
  (retryable, nothing of it takes effect), and any other speech (the LLM's reply to the user)
  is cut as it is created, since it could only hang;
- once an avatar of ours is in the room again, speech works as before.

An avatar of ours is a participant whose ``lk.publish_on_behalf`` attribute names this agent:
LiveKit's avatar plugins, bitHuman's included, put it in their avatar's join token. A crashed
avatar counts as gone only once LiveKit drops it from the room.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

from livekit import rtc
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import DataStreamAudioOutput

from ..log import logger
from .session_gate import NotReady
from .speech import SpeechTracker

if TYPE_CHECKING:
    from livekit.agents.voice import AgentSession
    from livekit.agents.voice.events import SpeechCreatedEvent
    from livekit.agents.voice.io import AudioOutput

AVATAR_GONE_MESSAGE: Final = (
    "The agent's avatar has left the room; nothing was said. Try again once it is back."
)


def streams_to_avatar(audio: AudioOutput | None) -> bool:
    """Whether ``audio`` (a session's audio output chain) ends in a remote avatar."""
    while audio is not None:
        if isinstance(audio, DataStreamAudioOutput):
            return True
        audio = audio.next_in_chain
    return False


class AvatarWatch:
    """Notices the agent's avatar leaving, and keeps the session from waiting for it forever.

    Args:
        session: The agent session whose audio may go to an avatar.
        room: The agent's room.
        speeches: Cuts the speeches that can no longer be heard (and reports them).
    """

    def __init__(
        self, session: AgentSession[Any], room: rtc.Room, speeches: SpeechTracker
    ) -> None:
        self._session = session
        self._room = room
        self._speeches = speeches
        self._left = False

    @property
    def absent(self) -> bool:
        """An avatar of ours left, none is in the room now, and speech would go to it."""
        return self._left and not self._avatar_present() and self._audio_to_avatar()

    def require_avatar(self) -> None:
        """Raise ``NotReady`` when a speech asked for now could not be heard."""
        if self.absent:
            raise NotReady(AVATAR_GONE_MESSAGE)

    # ------------------------------------------------------------------------------------------
    # room and session listeners (hooked by ContextPlugin)

    def on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if not self._is_ours(participant):
            return
        self._left = True
        if not self._audio_to_avatar() or self._avatar_present():
            return
        cut = self._speeches.cut_all_for_avatar()
        logger.warning(
            "the agent's avatar left the room; speech is cut until it is back",
            extra={"avatar_identity": participant.identity, "speeches_cut": cut},
        )
        # what is not ours (the LLM's replies) is waiting for the avatar too; a session that is
        # not running (RuntimeError) has nothing playing
        with contextlib.suppress(RuntimeError):
            self._session.interrupt(force=True)

    def on_speech_created(self, ev: SpeechCreatedEvent) -> None:
        if self.absent:
            self._speeches.cut_for_avatar(ev.speech_handle)

    # ------------------------------------------------------------------------------------------

    def _audio_to_avatar(self) -> bool:
        output = self._session.output
        return output.audio_enabled and streams_to_avatar(output.audio)

    def _is_ours(self, participant: rtc.Participant) -> bool:
        on_behalf = participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF)
        return (
            on_behalf is not None
            and self._room.isconnected()
            and on_behalf == self._room.local_participant.identity
        )

    def _avatar_present(self) -> bool:
        if not self._room.isconnected():
            return False
        return any(self._is_ours(p) for p in self._room.remote_participants.values())
