"""Imported by pytest before ``tests/conftest.py``: isolates the session's network first."""

from __future__ import annotations

from devtools.netns import isolate

_NETWORK = isolate()


def pytest_report_header() -> str:
    return _NETWORK
