"""Everything in ``tests/integration`` needs a real LiveKit server and is skipped without one.

Each test here is marked ``integration`` and skipped, saying which variables are missing,
unless ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` are set. See README.md
in this directory for how to run them against ``livekit-server --dev``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRED_ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
_HERE = Path(__file__).resolve().parent


def missing_env() -> list[str]:
    return [name for name in REQUIRED_ENV if not os.environ.get(name)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # a conftest hook sees the whole session's items: touch only this directory's
    missing = missing_env()
    skip = pytest.mark.skip(
        reason="needs a real LiveKit server: set "
        + ", ".join(missing)
        + " (livekit-server --dev: ws://127.0.0.1:7880, devkey, secret)"
    )
    for item in items:
        if _HERE not in Path(item.path).resolve().parents:
            continue
        item.add_marker(pytest.mark.integration)
        # livekit-server --dev signs with the 6-byte secret "secret"; PyJWT warns about it
        item.add_marker(pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"))
        if missing:
            item.add_marker(skip)
