"""The protocol's requests as typed calls: ``speak``, ``add_context``, ``remove_context``,
``get_state`` and ``send``.

:class:`RequestCalls` turns each call's arguments into a protocol v1 request and its ack into
what the call returns. How a request is prepared, delivered and how a playout is awaited is the
subclass's job (:class:`~.client.ContextClient`), so this module holds no connection state.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel

from ..errors import ErrorCode
from ..protocol import (
    DEFAULT_CONTEXT_ROLE,
    AgentStateInfo,
    ContextRole,
    ContextScope,
    Request,
    SpeakMode,
    SpeechFinishedEvent,
    SuccessAck,
)
from ..request_errors import ContextError, PlayoutTimeoutError, SpeechFailedError
from .clips import AudioClip
from .options import SpeakOptions
from .results import SpeakResult

if TYPE_CHECKING:
    # typing.Unpack is 3.11+; only the type checker reads these annotations
    from typing_extensions import Unpack


class RequestCalls(abc.ABC):
    """The public request calls of :class:`~.client.ContextClient`, over three hooks."""

    @abc.abstractmethod
    def _prepare(self, request: Request | BaseModel | Mapping[str, Any]) -> dict[str, Any]:
        """The request as it will be sent (an id given, validated); raises when closed."""

    @abc.abstractmethod
    async def _deliver(self, obj: dict[str, Any], timeout: float | None) -> SuccessAck:
        """Send the prepared request until it is acknowledged (with retries)."""

    @abc.abstractmethod
    async def _send_clip(self, clip: AudioClip) -> dict[str, str]:
        """Stream ``clip`` to the agent; the request's ``audio`` field (v1.3)."""

    @abc.abstractmethod
    async def wait_for_playout(
        self, request_id: str, *, timeout: float | None = None
    ) -> SpeechFinishedEvent:
        """Wait for the ``speech_finished`` event of ``request_id``."""

    # The three typed forms differ only in what ``wait_for_playout`` makes ``speak`` return.
    @overload
    async def speak(
        self,
        text: str | None = ...,
        *,
        wait_for_playout: Literal[False] = ...,
        **options: Unpack[SpeakOptions],
    ) -> SuccessAck: ...

    @overload
    async def speak(
        self,
        text: str | None = ...,
        *,
        wait_for_playout: Literal[True],
        **options: Unpack[SpeakOptions],
    ) -> SpeakResult: ...

    @overload
    async def speak(
        self, text: str | None = ..., *, wait_for_playout: bool, **options: Unpack[SpeakOptions]
    ) -> SuccessAck | SpeakResult: ...

    async def speak(
        self,
        text: str | None = None,
        *,
        instructions: str | None = None,
        id: str | None = None,
        allow_interruptions: bool = True,
        interrupt: bool = False,
        mode: SpeakMode | None = None,
        end_call_after: bool = False,
        add_to_history: bool = True,
        start_within_s: float | None = None,
        audio: bytes | str | os.PathLike[str] | None = None,
        audio_mime_type: str | None = None,
        wait_for_playout: bool = False,
        timeout: float | None = None,
        playout_timeout: float | None = None,
    ) -> SuccessAck | SpeakResult:
        """Make the agent say ``text`` through its TTS (or phrase ``instructions`` with its LLM,
        or play a recorded ``audio`` clip).

        Args:
            text: What to say, verbatim.
            instructions: Instead of ``text``: what the LLM should say, in its own words.
            id: The request id (the dedup key). Default: a random one.
            allow_interruptions: False: the user cannot barge in. Default True.
            interrupt: True: cut the agent's current interruptible speech first. Default False:
                queue behind it.
            mode: ``"queue"``, ``"interrupt"`` or ``"if_idle"`` (refused with ``BUSY`` if the
                agent or the user is speaking). Default: from ``interrupt``.
            end_call_after: Hang up once it has played out (kept if the user cut it: then
                ``speech_finished`` says ``call_kept``). Default False.
            add_to_history: False: keep it out of the LLM's context and history. Default True.
            start_within_s: v1.3: cancel the speech if it has not started playing this many
                seconds after the agent applied it (``SpeechFailedError``, reason
                ``not_started``); it never plays late. Default: the agent's, 30 s
                (``DEFAULT_START_WITHIN_S``).
            audio: v1.3: a recorded clip to play instead of synthesized speech, as bytes (WAV,
                MP3, Ogg/Opus, FLAC, AAC ...) or a file's path: at most ``MAX_CLIP_BYTES`` (4
                MiB) and ``MAX_CLIP_S`` (30 s). It is streamed to the agent first (a LiveKit
                byte stream), then played through the same path as TTS audio (an avatar
                lip-syncs it). ``text`` is then optional: the clip's transcript, for the
                history. Default: none.
            audio_mime_type: The clip's type. Default: from the file's name or its first bytes.
            wait_for_playout: Also wait until the speech has played out (or was cut).
            timeout: Seconds to wait for the ack to each attempt. Default: the client's.
            playout_timeout: Seconds to wait for the end of the speech. Default: the client's.

        Returns:
            The success ack (``data.speech_id`` names the speech; ``duplicate`` is True when an
            earlier attempt was applied already), or with ``wait_for_playout`` a
            :class:`SpeakResult`.

        Raises:
            ContextError: The agent refused the request, or it could not be delivered (a clip
                the agent cannot play is refused with ``VALIDATION_ERROR`` or
                ``PAYLOAD_TOO_LARGE``).
            AckTimeoutError: No ack in time.
            SpeechFailedError: Accepted, but the speech did not play (with
                ``wait_for_playout``).
            PlayoutTimeoutError: Accepted, but the speech did not end in time.
        """
        clip = AudioClip.of(audio, audio_mime_type) if audio is not None else None
        prepared = self._prepare(
            _given(
                type="speak",
                id=id,
                message=text,
                instructions=instructions,
                allow_interruptions=allow_interruptions,
                interrupt=interrupt,
                mode=mode,
                end_call_after=end_call_after or None,  # v1.1: only when not the default
                add_to_history=None if add_to_history else False,
                start_within_s=start_within_s,
                # validated now with a stand-in: the clip streams only for a valid request
                audio={"stream_id": "pending"} if clip is not None else None,
            )
        )
        if clip is not None:
            prepared["audio"] = await self._send_clip(clip)
        ack = await self._deliver(prepared, timeout)
        if not wait_for_playout:
            return ack
        return await self._played(ack, prepared["id"], playout_timeout)

    async def _played(
        self, ack: SuccessAck, request_id: str, playout_timeout: float | None
    ) -> SpeakResult:
        """``ack`` with the end of its speech (a timeout keeps the ack)."""
        try:
            finished = await self.wait_for_playout(request_id, timeout=playout_timeout)
        except PlayoutTimeoutError as exc:
            raise PlayoutTimeoutError(
                exc.message, request_id=request_id, accepted=ack, why=exc.why
            ) from None
        except SpeechFailedError as exc:
            raise SpeechFailedError(exc.event, accepted=ack) from None
        return SpeakResult(ack=ack, finished=finished)

    async def add_context(
        self,
        text: str,
        *,
        key: str | None = None,
        role: ContextRole = DEFAULT_CONTEXT_ROLE,
        id: str | None = None,
        trigger_reply: bool = False,
        scope: ContextScope = "persistent",
        ttl_s: float | None = None,
        timeout: float | None = None,
    ) -> SuccessAck:
        """Give the agent background knowledge for its next replies; nothing is spoken.

        Args:
            text: The context.
            key: A later add_context with the same key replaces this one. Default: none.
            role: ``system`` (default), ``developer``, ``user`` or ``assistant``.
            id: The request id (the dedup key). Default: a random one.
            trigger_reply: Let the agent respond to it right away. Default False.
            scope: ``persistent`` (default) or ``next_turn`` (dropped after the next reply).
            ttl_s: Seconds after which the entry leaves the agent's context. Default: never.
            timeout: Seconds to wait for the ack to each attempt. Default: the client's.

        Returns:
            The success ack.

        Raises:
            ContextError: The agent refused the request, or it could not be delivered.
            AckTimeoutError: No ack in time.
        """
        prepared = self._prepare(
            _given(
                type="add_context",
                id=id,
                context=text,
                key=key,
                role=role,
                trigger_reply=trigger_reply,
                scope=scope,
                ttl_s=ttl_s,
            )
        )
        return await self._deliver(prepared, timeout)

    async def remove_context(
        self, key: str, *, id: str | None = None, timeout: float | None = None
    ) -> SuccessAck:
        """Remove the context added under ``key`` (``data.removed`` says whether there was one).

        Raises:
            ContextError: The agent refused the request, or it could not be delivered.
            AckTimeoutError: No ack in time.
        """
        prepared = self._prepare(_given(type="remove_context", key=key, id=id))
        return await self._deliver(prepared, timeout)

    async def get_state(self, *, timeout: float | None = None) -> AgentStateInfo:
        """The agent's and the user's state and the context entries the plugin holds.

        Raises:
            ContextError: The agent refused the request, or it could not be delivered.
            AckTimeoutError: No ack in time.
        """
        ack = await self._deliver(self._prepare({"type": "get_state"}), timeout)
        if ack.data.state is None:
            raise ContextError(
                ErrorCode.INTERNAL_ERROR,
                "The agent's get_state answer carries no state.",
                request_id=ack.id,
                retryable=False,
            )
        return ack.data.state

    async def send(
        self, request: Request | BaseModel | Mapping[str, Any], *, timeout: float | None = None
    ) -> SuccessAck:
        """Send any protocol v1 request (a model such as ``SpeakRequest``, or a mapping).

        A request without an ``id`` gets a random one; read it from the returned ack.

        Raises:
            ContextError: The request is invalid, the agent refused it, or it could not be
                delivered.
            AckTimeoutError: No ack in time.
        """
        return await self._deliver(self._prepare(request), timeout)


def _given(**fields: Any) -> dict[str, Any]:
    """The request fields the caller gave: a None means "not given" (the agent's default)."""
    return {name: value for name, value in fields.items() if value is not None}
