"""Running the TypeScript client (``js/``) from pytest: Node, its npm dependencies, its build.

The README's one test command runs the TypeScript suites through these helpers. Without Node,
the npm dependencies (``npm ci`` in ``js/``) or Chromium, a test skips saying what is missing,
and under ``CI=true`` it fails instead: CI must never pass with them skipped. Nothing here
downloads anything (the suite runs in a network namespace with only loopback); ``.ci/run``
installs Node's dependencies and Chromium before the tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
JS: Final = ROOT / "js"
CHROMIUM: Final = Path(os.environ.get("IMAGINEX_CHROMIUM", "/usr/bin/chromium"))
NODE_TIMEOUT_S: Final = 600.0
_build_lock = threading.Lock()
_built: list[bool] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """Skip (fail under CI=true) because ``what`` is missing."""
    if in_ci():
        pytest.fail(f"CI=true and {what}", pytrace=False)
    pytest.skip(what)


def node() -> str:
    """The ``node`` binary, with the npm dependencies installed and the package built."""
    binary = shutil.which("node")
    if binary is None:
        missing("node is not installed (Node 20+: apt-get install nodejs npm)")
    assert binary is not None
    if not (JS / "node_modules" / "typescript").is_dir():
        missing("the TypeScript client's npm dependencies are not installed (cd js && npm ci)")
    with _build_lock:
        if not _built:
            run([binary, "node_modules/typescript/bin/tsc", "-p", "tsconfig.json"])
            run([binary, "scripts/bundle.mjs"])
            _built.append(True)
    return binary


def chromium() -> Path:
    if not CHROMIUM.exists():
        missing(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@dataclass(frozen=True)
class NodeRun:
    returncode: int
    output: str

    def counts(self) -> dict[str, int]:
        """The node test runner's closing counts (``# pass 12`` ...)."""
        pattern = r"^# (tests|pass|fail|skipped|cancelled|todo) (\d+)$"
        return {k: int(v) for k, v in re.findall(pattern, self.output, re.M)}


def run(
    args: list[str],
    *,
    cwd: Path = JS,
    env: dict[str, str] | None = None,
    timeout: float = NODE_TIMEOUT_S,
    check: bool = True,
) -> NodeRun:
    """Run a command (in ``js/`` by default); with ``check``, fail the test on a non-zero exit."""
    completed = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        check=False,
    )
    result = NodeRun(completed.returncode, completed.stdout.decode("utf-8", errors="replace"))
    if check and completed.returncode != 0:
        command = " ".join(args)
        pytest.fail(f"{command} exited with {completed.returncode}:\n{result.output[-8000:]}")
    return result


def node_tests(
    *paths: str, env: dict[str, str] | None = None, timeout: float = NODE_TIMEOUT_S
) -> dict[str, int]:
    """Run ``node --test`` on ``paths``: every test must pass, none skipped; returns the counts."""
    result = run(
        [node(), "--test", "--test-reporter=tap", *paths], env=env, timeout=timeout, check=False
    )
    counts = result.counts()
    failed = counts.get("fail", 1) or counts.get("skipped", 0) or counts.get("cancelled", 0)
    if result.returncode != 0 or failed or not counts.get("pass"):
        pytest.fail(f"node --test {' '.join(paths)}: {counts}\n{result.output[-12000:]}")
    return counts


async def node_tests_async(
    *paths: str, env: dict[str, str] | None = None, timeout: float = NODE_TIMEOUT_S
) -> dict[str, int]:
    """:func:`node_tests` without blocking the event loop (an in-process agent keeps running)."""
    binary = node()
    process = await asyncio.create_subprocess_exec(
        binary, "--test", "--test-reporter=tap", "--test-concurrency=1", *paths,
        cwd=JS,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        tail = out.decode(errors="replace")[-12000:]
        pytest.fail(f"node --test {' '.join(paths)} timed out:\n{tail}")
    result = NodeRun(process.returncode or 0, out.decode("utf-8", errors="replace"))
    counts = result.counts()
    failed = counts.get("fail", 1) or counts.get("skipped", 0) or counts.get("cancelled", 0)
    if result.returncode != 0 or failed or not counts.get("pass"):
        pytest.fail(f"node --test {' '.join(paths)}: {counts}\n{result.output[-16000:]}")
    return counts


DOCS: Final = ROOT / "docs" / "typescript.md"


def readme_example() -> str:
    """The README's one TypeScript block (its fourth way to send a message)."""
    blocks = re.findall(r"^```ts\n(.*?)^```", (ROOT / "README.md").read_text("utf-8"), re.M | re.S)
    assert len(blocks) == 1, "the README has one TypeScript example"
    return str(blocks[0])


def docs_example(name: str) -> str:
    """The TypeScript block of ``docs/typescript.md`` marked ``<!-- run: name -->``."""
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(rf"<!-- run: {re.escape(name)} -->\n```ts\n(.*?)^```", text, re.M | re.S)
    assert match is not None, f"docs/typescript.md has no block marked 'run: {name}'"
    return match.group(1)


def to_javascript(typescript: str) -> str:
    """The example as an ES module a browser or Node runs: its types stripped by esbuild."""
    result = subprocess.run(
        [node(), str(JS / "scripts" / "strip-types.mjs")],
        input=typescript.encode(), capture_output=True, check=False, timeout=60,
    )
    if result.returncode != 0:
        pytest.fail(f"esbuild could not read the example:\n{result.stderr.decode()}")
    return result.stdout.decode()
