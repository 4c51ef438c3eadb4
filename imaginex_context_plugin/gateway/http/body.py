"""Reading a request's JSON body: within its size limit and its time limit, one JSON object,
validated against the endpoint's model with one short sentence on failure.

A body aiohttp cannot decode (a ``Content-Encoding: gzip`` or ``deflate`` body that is not
valid compressed data) is the client's error on every route:
:func:`~..refusals.unreadable_body` names it for the answer, and the middleware lets the
connection go after answering (aiohttp's parser cannot read another request on it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ...errors import validation_sentence
from ..models import CONTEXT_TYPES
from ..refusals import (
    REQUEST_TIMEOUT,
    Refusal,
    compressed_with,
    invalid,
    too_large,
    unreadable_body,
)

_M = TypeVar("_M", bound=BaseModel)
_JSON_WHITESPACE: Final = b" \t\r\n"
"""What an empty body may hold (JSON's whitespace; a form feed is not, and is refused)."""


class BodyReader:
    """Reads and validates request bodies.

    Args:
        max_body_bytes: Largest body read.
        body_timeout: Seconds to receive the body once the headers are in.
    """

    def __init__(self, *, max_body_bytes: int, body_timeout: float) -> None:
        self._max_body_bytes = max_body_bytes
        self._body_timeout = body_timeout

    async def read(self, request: web.Request, model: type[_M]) -> _M:
        """The body as ``model``.

        An empty body is ``{}`` for a model whose every field is optional (``interrupt``,
        ``reset-instructions``, ...).

        Raises:
            Refusal: 413 (too large), 408 (too slow; the connection is closed), 400 (empty
                where a field is required, not JSON, not an object, or not valid for ``model``).
        """
        optional = not any(field.is_required() for field in model.model_fields.values())
        obj = await self._read_object(request, allow_empty=optional)
        try:
            return model.model_validate(obj)
        except ValidationError as exc:
            raise invalid(validation_sentence(exc, types=CONTEXT_TYPES)) from None

    async def _read_object(self, request: web.Request, *, allow_empty: bool) -> dict[str, Any]:
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise too_large(self._max_body_bytes)
        try:
            if request.content.is_eof():
                # all of it is in already (a small body comes with its headers): nothing to
                # wait for, so no timer (asyncio.wait_for costs a task and a timer, about
                # 40 us a request on Python 3.11)
                raw = await request.read()
            else:
                raw = await asyncio.wait_for(request.read(), self._body_timeout)
        except web.HTTPRequestEntityTooLarge:
            raise too_large(self._max_body_bytes) from None
        except web.RequestPayloadError as exc:
            raise invalid(unreadable_body(request, exc)) from None
        except asyncio.TimeoutError:
            # the rest of the body may still come; the connection cannot serve another request
            raise Refusal(
                408,
                REQUEST_TIMEOUT,
                f"The request body did not arrive within {self._body_timeout:g} seconds.",
                close=True,
            ) from None
        if not raw.strip(_JSON_WHITESPACE):
            encoding = compressed_with(request)
            if encoding is not None:
                # aiohttp reads a gzip stream cut before its first block (a lone byte) as no
                # body at all, without an error: a compressed body must hold the JSON object
                raise invalid(
                    f"Request body is empty once decompressed ({encoding}); send a JSON "
                    "object, or send it without Content-Encoding."
                )
            if allow_empty:
                return {}
            raise invalid("Request body is empty; send a JSON object.")
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise invalid("Request body is not valid JSON.") from None
        if not isinstance(obj, dict):
            raise invalid("Request body must be a JSON object.")
        return obj
