"""The dependency rule ARCHITECTURE.md states is the one the code keeps: import-linter checks the
contracts in ``pyproject.toml`` (the three sides independent, each above ``_livekit``, everything
above ``protocol`` and ``errors``; the gateway's rooms in order), so a wrong import fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(no_cache=True, no_logo=True))"
)


def test_every_import_keeps_the_contracts() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LINT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout, done.stdout


def test_the_contracts_are_the_ones_the_architecture_states() -> None:
    architecture = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    for contract in ('id = "sides"', 'id = "layers"', 'id = "gateway"'):
        assert contract in pyproject
    assert "## The dependency rule" in architecture
    assert "tests/project/test_layers.py" in architecture
