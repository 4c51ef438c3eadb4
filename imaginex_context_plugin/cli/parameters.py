"""What every command's parameters share: finite numbers, names, visible text, the request id,
and the one line about a short LiveKit API secret."""

from __future__ import annotations

import math
import unicodedata
import warnings
from collections.abc import Callable
from typing import Any, Final, TypeVar

import click
import jwt.warnings

from .._livekit.settings import short_api_secret_note
from ..protocol import has_visible_text
from ..sender import DEFAULT_PLAYOUT_TIMEOUT_S

_F = TypeVar("_F", bound=Callable[..., Any])


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan`` and ``inf``, which FloatRange lets through
    (``nan`` compares false with every bound, so ``--agent-wait nan`` would wait forever)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def visible_text(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A text argument: refused offline when the agent would refuse it for showing nothing
    (the protocol's one rule, :func:`~..protocol.has_visible_text`)."""
    if value is not None and not has_visible_text(value):
        raise click.BadParameter("must contain visible text.", ctx, param)
    return value


def name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A room, identity, code, key or id: not blank, no control characters."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("must not be empty.", ctx, param)
    if any(unicodedata.category(char) in ("Cc", "Cf") for char in value):
        raise click.BadParameter("must not contain control characters.", ctx, param)
    return value


def not_empty(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A secret: an empty ``--secret`` would silently send unsigned requests."""
    if value is not None and not value:
        raise click.BadParameter("must not be empty.", ctx, param)
    return value


request_id_option = click.option(
    "--id",
    "request_id",
    callback=name,
    help="Request id; the agent applies an id once. [default: random]",
)
"""``--id``: the request's id, kept across retries."""


def seconds_option(
    flag: str, *, default: float, help: str, envvar: str | None = None
) -> Callable[[_F], _F]:
    """An option taking a positive finite number of seconds, its default shown in ``--help``
    (and its environment variable, if it has one)."""
    return click.option(
        flag,
        type=FiniteFloatRange(min=0.0, min_open=True),
        default=default,
        show_default=True,
        envvar=envvar,
        show_envvar=envvar is not None,
        help=help,
    )


def count_option(
    flag: str, *, default: int, help: str, envvar: str | None = None
) -> Callable[[_F], _F]:
    """An option taking a whole number of at least 1, its default shown in ``--help`` (and its
    environment variable, if it has one)."""
    return click.option(
        flag,
        type=click.IntRange(min=1),
        default=default,
        show_default=True,
        envvar=envvar,
        show_envvar=envvar is not None,
        help=help,
    )


def playout_timeout_option(what: str) -> Callable[[_F], _F]:
    """``--playout-timeout``: how long ``--wait-playout`` waits for the end of ``what``."""
    return seconds_option(
        "--playout-timeout",
        default=DEFAULT_PLAYOUT_TIMEOUT_S,
        help=f"Seconds to wait for the end of {what}, with --wait-playout.",
    )


_KEY_LENGTH_WARNING: Final[type[Warning] | None] = getattr(
    jwt.warnings, "InsecureKeyLengthWarning", None
)
"""PyJWT's warning about an HMAC key under 32 bytes (PyJWT before 2.10 has none)."""


def api_secret_warning_once(api_key: str, api_secret: str) -> None:
    """Say once, in one line, that the API secret is short; not at all for LiveKit's dev keys.

    PyJWT warns on every token it signs with a short key (two lines each, and a command signs
    several): with ``livekit-server --dev``'s own ``devkey`` / ``secret``, a key the user did
    not choose, that is only noise.
    """
    if _KEY_LENGTH_WARNING is not None:
        warnings.filterwarnings("ignore", category=_KEY_LENGTH_WARNING)
    note = short_api_secret_note(api_key, api_secret)
    if note is not None:
        click.echo(f"warning: {note}", err=True)
