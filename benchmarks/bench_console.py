"""The operator console: from the agent's event to the line in the page, next to a bare SSE
client reading the same gateway stream in the same run.

A real ``livekit-server`` on loopback (the one ``LIVEKIT_URL`` names, else one started here; as
root in a loopback-only network namespace), a real agent worker
(``tests/integration/console_worker.py``), the real ``imaginex-context gateway`` process, and
Debian's Chromium (``playwright-core``, ``js/console/test/bench.mjs``) with the console signed in
and the call open. Each round, one at a time:

- the caller's words: the worker's scripted STT hears ``bench words <n>`` (``test.hear_interim``,
  an interim ``user_transcript``, as a real STT sends while the caller speaks);
- a committed line: ``POST /v1/agent/{code}/speak`` of ``bench line <n>``, whose
  ``conversation_item`` the agent sends once it has been said.

The latency of each is the time the page shows the text (a MutationObserver: in the DOM; and the
next animation frame: painted) minus the ``timestamp`` the agent put in the event (wall clock,
milliseconds, the same machine). The floor is a bare ``aiohttp`` client on the same
``GET /v1/agent/{code}/events`` stream (api-secret), timed the same way.

Target (issue 25): a transcript line reaches the page within 250 ms of the agent's event, p99.

Run: ``python benchmarks/bench_console.py [--rounds N]`` (after ``cd js && npm ci``).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# before anything imports LiveKit: its native threads must start inside the namespace
from devtools.netns import isolate  # noqa: E402
from devtools.processes import stop_process  # noqa: E402

NETWORK = isolate()

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from datetime import datetime  # noqa: E402
from typing import Any  # noqa: E402

import aiohttp  # noqa: E402
from _harness import Figure, Report, percentile, script_main  # noqa: E402
from _live import agent_room, room_token, worker_on_livekit  # noqa: E402
from livekit import api, rtc  # noqa: E402

from devtools.gateway_process import gateway_env, start_gateway, until_serving  # noqa: E402
from devtools.livekit_server import (  # noqa: E402
    ServerInfo,
    free_tcp_port,
)

WORKER_FILE = "tests/integration/console_worker.py"
AGENT_NAME = "console-agent"
AGENT_CODE = "SUPPORT01"
SECRET = "bench-console-secret-0b7e"
JS = REPO_ROOT / "js"
TARGET_MS = 250.0
ROUND_WAIT_S = 10.0
NODE_TIMEOUT_S = 900.0
PAUSE_S = 0.05


@contextlib.contextmanager
def gateway(lk: ServerInfo, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``imaginex-context gateway`` (the console on, the default), stopped afterwards."""
    port = free_tcp_port()
    process = start_gateway(port, log, gateway_env(lk, IMAGINEX_API_SECRET=SECRET))
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop_process(process, timeout=15)


def event_ms(event: dict[str, Any]) -> float:
    """The agent's timestamp of ``event`` in epoch milliseconds."""
    stamp = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
    return stamp.timestamp() * 1000.0


class BareStream:
    """The floor: a plain aiohttp client on the gateway's events stream, timing each text."""

    def __init__(self) -> None:
        self.events: dict[str, tuple[float, float]] = {}  # text -> (event ms, arrival ms)
        self.open = asyncio.Event()
        self._arrived: dict[str, asyncio.Event] = {}

    def waiter(self, text: str) -> asyncio.Event:
        return self._arrived.setdefault(text, asyncio.Event())

    async def read(self, url: str, room: str) -> None:
        params = {"room_id": room, "interim": "true"}
        async with aiohttp.ClientSession() as http, http.get(
            f"{url}/v1/agent/{AGENT_CODE}/events",
            params=params,
            headers={"api-secret": SECRET},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            response.raise_for_status()
            self.open.set()
            async for raw in response.content:
                line = raw.decode("utf-8").rstrip("\n")
                if not line.startswith("data: "):
                    continue
                arrived = time.time() * 1000.0
                event = json.loads(line[6:])
                text = event.get("text")
                # what the page shows a line for (an agent_transcript repeats a said line)
                shown = event.get("type") in ("user_transcript", "conversation_item")
                if shown and isinstance(text, str) and text.startswith("bench ") and (
                    text not in self.events
                ):
                    self.events[text] = (event_ms(event), arrived)
                    self.waiter(text).set()


async def agent_identity(lk: ServerInfo, room: str) -> str:
    async with api.LiveKitAPI(lk.url, lk.api_key, lk.api_secret) as lkapi:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return next(
        p.identity for p in listing.participants if p.attributes.get("imaginex.agent_code")
    )


async def measure(
    lk: ServerInfo, url: str, room: str, rounds: int, warmup: int
) -> tuple[dict[str, list[float]], bool]:
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    caller = rtc.Room()
    await caller.connect(lk.url, room_token(lk, room, "bench-caller"))
    agent = await agent_identity(lk, room)
    bare = BareStream()
    reader = asyncio.create_task(bare.read(url, room))
    page = await asyncio.create_subprocess_exec(
        node, "console/test/bench.mjs",
        cwd=JS,
        env={**os.environ, "GATEWAY_URL": url, "SECRET": SECRET, "ROOM": room},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert page.stdout is not None
    assert page.stdin is not None
    complete = True
    try:
        await asyncio.wait_for(bare.open.wait(), 30)
        while (line := await asyncio.wait_for(page.stdout.readline(), 120)) != b"READY\n":
            if not line:
                raise RuntimeError("bench.mjs ended before the console was ready")
        kinds: dict[str, str] = {}
        async with aiohttp.ClientSession() as http:
            for n in range(warmup + rounds):
                words = f"bench words {n}"
                await caller.local_participant.perform_rpc(
                    destination_identity=agent, method="test.hear_interim", payload=words
                )
                line_text = f"bench line {n}"
                async with http.post(
                    f"{url}/v1/agent/{AGENT_CODE}/speak",
                    json={"message": line_text, "room_id": room},
                    headers={"api-secret": SECRET},
                ) as response:
                    response.raise_for_status()
                for text in (words, line_text):
                    try:
                        await asyncio.wait_for(bare.waiter(text).wait(), ROUND_WAIT_S)
                    except asyncio.TimeoutError:
                        complete = False
                    if n >= warmup:
                        kinds[text] = "words" if text == words else "line"
                await asyncio.sleep(PAUSE_S)  # the page draws, nothing else queued
        page.stdin.write(b"DONE\n")
        await page.stdin.drain()
        out, _ = await asyncio.wait_for(page.communicate(), NODE_TIMEOUT_S)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await reader
        if page.returncode is None:
            page.kill()
            await page.wait()
        await caller.disconnect()
    if page.returncode != 0:
        raise RuntimeError(f"bench.mjs exited with {page.returncode}:\n{out.decode()[-4000:]}")
    seen = {r["text"]: r for r in json.loads(out.decode().strip().splitlines()[-1])}
    samples: dict[str, list[float]] = {
        f"{where}_{kind}": [] for where in ("bare", "dom", "frame") for kind in ("words", "line")
    }
    for text, kind in kinds.items():
        if text not in bare.events or text not in seen:
            complete = False
            continue
        at, arrived = bare.events[text]
        samples[f"bare_{kind}"].append(arrived - at)
        samples[f"dom_{kind}"].append(seen[text]["dom_ms"] - at)
        if seen[text]["frame_ms"] is not None:
            samples[f"frame_{kind}"].append(seen[text]["frame_ms"] - at)
    return samples, complete


def p50_p99(samples_ms: list[float]) -> str:
    return f"{percentile(samples_ms, 0.5):.0f} / {percentile(samples_ms, 0.99):.0f} ms"


async def run(rounds: int = 200, warmup: int = 10, server: ServerInfo | None = None) -> Report:
    """Measure; ``server``: use this one instead of the environment's or a new one."""
    report = Report("console: agent event -> transcript line in the page (Chromium) vs bare SSE")
    report.notes.append(NETWORK)
    with (
        worker_on_livekit(server, WORKER_FILE, prefix="bench-console") as (lk, tmp),
        gateway(lk, tmp / "gateway.log") as (process, url),
    ):
        await until_serving(
            url,
            lambda: process.poll() is not None,
            lambda: (tmp / "gateway.log").read_text(errors="replace")[-3000:],
        )
        async with agent_room(lk, AGENT_NAME, AGENT_CODE, prefix="bench-console") as room:
            samples, complete = await measure(lk, url, room, rounds, warmup)
    report.ok = complete and len(samples["dom_words"]) == len(samples["dom_line"]) == rounds
    for kind, what in (("words", "caller's words (interim transcript)"),
                       ("line", "committed line (conversation_item)")):
        floor = p50_p99(samples[f"bare_{kind}"])
        report.add(Figure(f"floor: bare SSE client, {what}, event -> arrival, p50 / p99", floor))
        for where, label in (("dom", "in the DOM"), ("frame", "painted (next frame)")):
            values = samples[f"{where}_{kind}"]
            p99 = percentile(values, 0.99)
            report.add(Figure(
                f"console: {what}, event -> {label}, p50 / p99",
                p50_p99(values),
                floor,
                target=f"p99 <= {TARGET_MS:.0f} ms" if where == "dom" else "",
                met=(p99 <= TARGET_MS) if where == "dom" else None,
            ))
    report.notes.append(
        f"{rounds} rounds after {warmup} warm-up rounds, one at a time: the caller's words "
        "(test.hear_interim), then a speak whose conversation_item comes once it is said; the "
        "agent's event timestamp (ms) against the page's Date.now() and the bare client's "
        "arrival"
    )
    return report


def main() -> None:
    script_main(__doc__, run, rounds=200, warmup=10)


if __name__ == "__main__":
    main()
