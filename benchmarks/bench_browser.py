"""In a real browser: ``speak`` -> ack with the TypeScript room client, next to a bare
``performRpc`` echo measured in the same page and run.

Debian's Chromium (``playwright-core``, ``js/test/browser/bench.mjs``) joins a real
``livekit-server`` on loopback (the one ``LIVEKIT_URL`` names, else one started here; as root in
a loopback-only network namespace) where ``tests/integration/browser_worker.py`` runs as a real
agent worker with ``ContextPlugin``. Each round the page sends, one at a time and in alternating
order, a ``speak`` (``ContextClient.speak``, until its ack) and a bare ``performRpc`` to the same
agent participant whose handler returns the payload (the same bytes as the speak request); each
speech plays out before the next round.

Target (issue 23): speak -> ack p99 within 1.3x the echo's p99.

Run: ``python benchmarks/bench_browser.py [--requests N]`` (after ``cd js && npm ci``).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# before anything imports LiveKit: its native threads must start inside the namespace
from devtools.netns import isolate  # noqa: E402

NETWORK = isolate()

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

from _harness import Figure, Report, ms, percentile, script_main  # noqa: E402
from _live import agent_room, room_token, worker_on_livekit  # noqa: E402

from devtools.livekit_server import ServerInfo  # noqa: E402

WORKER_FILE = "tests/integration/browser_worker.py"
AGENT_NAME = "browser-agent"
AGENT_CODE = "A12345678"
BROWSER_IDENTITY = "web-user"
JS = REPO_ROOT / "js"
FACTOR = 1.3
NODE_TIMEOUT_S = 900.0


async def measure_in_browser(
    lk: ServerInfo, room: str, requests: int, warmup: int
) -> dict[str, list[float]]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    process = await asyncio.create_subprocess_exec(
        node, "test/browser/bench.mjs",
        cwd=JS,
        env={
            **os.environ,
            "LIVEKIT_URL": lk.url,
            "BROWSER_TOKEN": room_token(lk, room, BROWSER_IDENTITY),
            "REQUESTS": str(requests),
            "WARMUP": str(warmup),
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), NODE_TIMEOUT_S)
    text = out.decode("utf-8", errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"bench.mjs exited with {process.returncode}:\n{text[-4000:]}")
    samples: dict[str, list[float]] = json.loads(text.strip().splitlines()[-1])
    return samples


def p50_p99(samples_ms: list[float]) -> str:
    seconds = [s / 1e3 for s in samples_ms]
    return f"{ms(percentile(seconds, 0.5))} / {ms(percentile(seconds, 0.99))}"


async def run(requests: int = 300, warmup: int = 20, server: ServerInfo | None = None) -> Report:
    """Measure; ``server``: use this one instead of the environment's or a new one."""
    report = Report("browser: speak -> ack (TypeScript room client in Chromium) vs performRpc echo")
    report.notes.append(NETWORK)
    with worker_on_livekit(server, WORKER_FILE, prefix="bench-browser") as (lk, _):
        async with agent_room(lk, AGENT_NAME, AGENT_CODE, prefix="bench-browser") as room:
            samples = await measure_in_browser(lk, room, requests, warmup)
    echo, speak = samples["echo_ms"], samples["speak_ms"]
    report.ok = len(echo) == len(speak) == requests
    echo_text = p50_p99(echo)
    report.add(Figure("floor: bare performRpc echo (same page, same agent), p50 / p99", echo_text))
    echo_p99 = percentile(echo, 0.99)
    speak_p99 = percentile(speak, 0.99)
    report.add(
        Figure(
            "browser speak -> ack (ContextClient over RPC), p50 / p99",
            p50_p99(speak),
            echo_text,
            f"{speak_p99 / echo_p99:.2f}x",
            f"p99 <= {FACTOR}x echo p99 = {ms(FACTOR * echo_p99 / 1e3)}",
            speak_p99 <= FACTOR * echo_p99,
        )
    )
    report.notes.append(
        f"{requests} rounds after {warmup} warm-up rounds: one speak and one echo each, one at a "
        "time, alternating which goes first; each speech plays out before the next round"
    )
    return report


def main() -> None:
    script_main(__doc__, run, requests=300, warmup=20)


if __name__ == "__main__":
    main()
