"""The operator console's page as shipped: built from ``js/console/`` (TypeScript), committed
inside the package (``imaginex_context_plugin/gateway/http/console/static/``) so that running the
gateway needs no Node. Here: the sources type-check, building them again gives exactly the
committed files, and the console's own code stays within its size budget.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from tests.typescript import JS, ROOT, node, run

STATIC = ROOT / "imaginex_context_plugin" / "gateway" / "http" / "console" / "static"
BUDGET_BYTES = 60 * 1024
"""The console's own JavaScript and CSS (livekit-client aside), minified + gzip."""


def test_the_console_type_checks() -> None:
    binary = node()
    run([binary, "node_modules/typescript/bin/tsc", "-p", "console/tsconfig.json"])


def test_the_committed_build_is_what_the_sources_build_to(tmp_path: Path) -> None:
    binary = node()
    run([binary, "console/build.mjs", str(tmp_path)])
    built = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in STATIC.iterdir() if not p.name.startswith(".")}
    assert sorted(built) == sorted(committed), (
        "the committed console build is stale: run `node console/build.mjs` in js/"
    )
    for name, body in built.items():
        assert committed[name] == body, (
            f"static/{name} differs from its sources' build: run `node console/build.mjs` in js/"
        )


def test_the_consoles_own_code_is_within_budget_and_livekit_client_is_apart() -> None:
    script = (STATIC / "console.js").read_bytes()
    styles = (STATIC / "console.css").read_bytes()
    size = len(gzip.compress(script, 9)) + len(gzip.compress(styles, 9))
    print(f"console.js + console.css: {len(script) + len(styles)} bytes minified, {size} gzip")
    assert size <= BUDGET_BYTES
    [livekit] = [p for p in STATIC.iterdir() if p.name.startswith("livekit-client")]
    # loaded only for a take-over: console.js names it in a dynamic import, nothing more
    assert re.search(rb'import\("\./' + re.escape(livekit.name.encode()) + rb'"\)', script)
    assert b"RTCPeerConnection" not in script
    assert b"RTCPeerConnection" in livekit.read_bytes()


def test_the_sources_have_no_inline_html() -> None:
    # every text reaches the page as textContent: no markup built from strings
    for source in (JS / "console" / "src").glob("*.ts"):
        text = source.read_text(encoding="utf-8")
        for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert forbidden not in text, f"{source.name} uses {forbidden}"
        assert "localStorage" not in text
        assert "sessionStorage" not in text
