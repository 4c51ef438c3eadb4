"""Which participant is the agent: one rule for the client, the CLI and the gateway.

The rule, among the room's participants that are neither senders (a sender joins with the
``imaginex.sender`` attribute: the CLI, the gateway, other clients) nor avatars (an avatar, such as
a bitHuman avatar, joins as kind AGENT with ``lk.publish_on_behalf`` naming the agent it speaks
for; it plays the agent's audio, it is not the agent):

1. with an agent code: the participant publishing that code (``imaginex.agent_code``);
2. without one: the participant of kind AGENT or publishing any code; among several, the only
   one publishing a code wins;
3. when more than one still matches, nobody is chosen: the choice is refused with
   ``AGENT_NOT_FOUND`` naming them all, because sending to one of them at random could speak
   in the wrong voice, and sending to all could speak twice. The caller fixes the target (an
   agent code, or an agent identity).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Final

from livekit import rtc
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF

from ..errors import ErrorCode
from ..protocol import AGENT_CODE_ATTRIBUTE, SENDER_ATTRIBUTE
from ..request_errors import ContextError

AGENT_KIND: Final = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT

Candidate = tuple[str, int, Mapping[str, str]]
"""A participant as ``(identity, kind, attributes)``."""


def choose_agent(
    candidates: Iterable[Candidate],
    *,
    agent_code: str | None,
    room: str,
    exclude: Collection[str] = (),
) -> str | None:
    """The identity of the one agent among ``candidates``, or None when there is none.

    Args:
        candidates: The room's participants.
        agent_code: The code the agent must publish; None for the one agent in the room.
        room: The room's name, for the error message.
        exclude: Identities never chosen (a sender's own).

    Raises:
        ContextError: ``AGENT_NOT_FOUND`` (not retryable) when more than one participant
            matches; the message names them.
    """
    # other senders (CLI, gateway replicas) and avatars join as agents too; never the target
    people = [
        person
        for person in candidates
        if SENDER_ATTRIBUTE not in person[2]
        and ATTRIBUTE_PUBLISH_ON_BEHALF not in person[2]
        and person[0] not in exclude
    ]
    if agent_code is not None:
        matches = [
            ident for ident, _, attrs in people if attrs.get(AGENT_CODE_ATTRIBUTE) == agent_code
        ]
    else:
        matches = [
            ident
            for ident, kind, attrs in people
            if kind == AGENT_KIND or AGENT_CODE_ATTRIBUTE in attrs
        ]
        with_code = [ident for ident, _, attrs in people if AGENT_CODE_ATTRIBUTE in attrs]
        if len(matches) > 1 and len(with_code) == 1:
            matches = with_code
    if len(matches) > 1:
        which = f"with agent code '{agent_code}' " if agent_code is not None else ""
        raise ContextError(
            ErrorCode.AGENT_NOT_FOUND,
            f"More than one agent {which}is in room '{room}' ({', '.join(sorted(matches))}); "
            + (
                "pass agent_code or agent_identity to choose one."
                if agent_code is None
                else "give each agent its own code, or pass agent_identity to choose one."
            ),
            retryable=False,
        )
    return matches[0] if matches else None
