"""What the sender's calls return beyond an ack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..protocol import HistoryItem, SpeechFinishedEvent, SuccessAck


@dataclass(frozen=True)
class SpeakResult:
    """What ``speak(..., wait_for_playout=True)`` returns: the ack and the end of the speech."""

    ack: SuccessAck
    finished: SpeechFinishedEvent

    @property
    def interrupted(self) -> bool:
        """Whether the speech was cut before its end (by the user, or by an interrupting speak)."""
        return self.finished.interrupted


@dataclass(frozen=True)
class HistoryResult:
    """What ``get_history`` returns: the newest conversation items, oldest first."""

    items: list[HistoryItem]
    truncated: bool = False
    """True when fewer items came back than asked for and available, to fit one packet."""


@dataclass(frozen=True)
class ServerSendResult:
    """What :func:`send_via_server_api` returns. Such a send is never acknowledged."""

    request_id: str
    room: str
    destination_identity: str
    acknowledged: Literal[False] = False
    """Always False: the server API gives the receiver no sender to answer."""
