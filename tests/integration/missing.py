"""A real part a live test needs is missing: under ``CI=true`` the run fails (a missing server
must never pass as a skip), elsewhere the test is skipped, saying why."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

from devtools.livekit_server import NoServer, find_binary


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Fail under ``CI=true``, skip elsewhere; ``reason`` says what is missing."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def server_binary() -> Path:
    """The ``livekit-server`` the suite uses, built if need be (:func:`missing` without it)."""
    try:
        return find_binary(build=True)
    except NoServer as exc:
        missing(str(exc))
