"""The documentation site in ``docs/`` builds whole, and says what the code does.

``mkdocs build --strict`` (also in ``.ci/run``) fails on a broken link, anchor or snippet and on
a page missing from ``mkdocs.yml``'s nav. The pages' runnable blocks are run by the tests named
in CONTRIBUTING.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_the_site_builds_with_every_page_in_the_nav_and_every_link_whole(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "index.html").is_file()
    # the project pages include the root files
    assert "Keep a Changelog" in (tmp_path / "changelog" / "index.html").read_text("utf-8")
    assert "mkdocs build --strict" in (tmp_path / "contributing" / "index.html").read_text("utf-8")


def test_the_signature_test_vectors_are_the_ones_the_signing_code_is_pinned_to() -> None:
    page = (DOCS / "protocol.md").read_text(encoding="utf-8")
    vectors = {
        vector["name"]: vector
        for vector in json.loads((ROOT / "fixtures" / "protocol.json").read_text("utf-8"))[
            "signatures"
        ]
    }
    for name in ("v1", "v1.2 sender"):
        vector = vectors[name]
        assert vector["signature"] in page, name
        assert f"`{vector['body']}`" in page
        assert f"secret `{vector['secret']}`, timestamp `{vector['timestamp']}`" in page
    assert f"`{vectors['v1.2 sender']['sender']}`" in page
