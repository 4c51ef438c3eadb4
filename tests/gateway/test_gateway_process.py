"""The real ``imaginex-context gateway`` process, over real HTTP on loopback.

LiveKit is configured at a closed loopback port, so everything the gateway answers before it
needs LiveKit (auth, validation, routing) is checked end to end, and a valid request shows the
``LIVEKIT_UNAVAILABLE`` path.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
import pytest

from devtools.gateway_process import gateway_env, until_serving
from devtools.processes import stop_async_process

SECRET = "process-test-secret-93f0a1"
CODE = "A12345678"
START_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0


def command() -> list[str]:
    script = Path(sys.executable).with_name("imaginex-context")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from imaginex_context_plugin.cli import main; main()"]


DEV_SECRET = "devsecret-0123456789abcdef0123456789abcdef"


def offline_env(*, api_secret: str = DEV_SECRET, **values: str) -> dict[str, str]:
    """:func:`gateway_env` with LiveKit settings pointing nowhere (nothing here reaches LiveKit)."""
    return gateway_env(
        LIVEKIT_URL="ws://127.0.0.1:1",
        LIVEKIT_API_KEY="devkey",
        LIVEKIT_API_SECRET=api_secret,
        **values,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def open_logs(out: Path, err: Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """Files for the child's output: a pipe nobody reads could fill up and stall it."""
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        yield stdout, stderr


@dataclass
class Running:
    process: asyncio.subprocess.Process
    base_url: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


async def run_to_exit(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command(),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    assert process.returncode is not None
    return process.returncode, (out + err).decode("utf-8", errors="replace")


@pytest.fixture
async def gateway_process(tmp_path: Path) -> AsyncIterator[Running]:
    async with running_gateway(tmp_path, DEV_SECRET) as running:
        yield running


@contextlib.asynccontextmanager
async def running_gateway(
    tmp_path: Path, api_secret: str, *options: str, **env_values: str
) -> AsyncIterator[Running]:
    """The gateway process, its LiveKit at a closed loopback port under the key ``devkey``."""
    port = free_port()
    stderr_path = tmp_path / "stderr.log"
    env = offline_env(
        api_secret=api_secret,
        IMAGINEX_API_SECRET=SECRET,
        **env_values,
    )
    with open_logs(tmp_path / "stdout.log", stderr_path) as (stdout, stderr):
        process = await asyncio.create_subprocess_exec(
            *command(),
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *options,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    running = Running(process, f"http://127.0.0.1:{port}", stderr_path)
    try:
        await wait_until_serving(running)
        yield running
    finally:
        if process.returncode is None:
            await stop_async_process(process, timeout=EXIT_TIMEOUT_S, first=signal.SIGINT)


async def wait_until_serving(running: Running) -> None:
    await until_serving(
        running.base_url, lambda: running.process.returncode is not None, running.stderr
    )


async def test_the_gateway_process_answers_over_real_http(gateway_process: Running) -> None:
    base = gateway_process.base_url
    speak = f"{base}/v1/agent/{CODE}/speak"
    add_context = f"{base}/v1/agent/{CODE}/add-context"
    async with aiohttp.ClientSession() as http:
        async with http.post(speak, json={"message": "Hi"}) as response:
            assert response.status == 401
            assert await response.json() == {
                "success": False,
                "error": "UNAUTHORIZED",
                "message": "Invalid api-secret",
            }
        async with http.post(
            speak, json={"message": "Hi"}, headers={"api-secret": "wrong"}
        ) as response:
            assert response.status == 401

        headers = {"api-secret": SECRET}
        async with http.post(
            add_context, json={"context": "Hi", "type": "shout"}, headers=headers
        ) as response:
            assert response.status == 400
            assert await response.json() == {
                "success": False,
                "error": "VALIDATION_ERROR",
                "message": "Invalid type. Must be one of: speak, add_context",
            }
        async with http.post(
            speak, data=b"{oops", headers={**headers, "Content-Type": "application/json"}
        ) as response:
            assert response.status == 400
            assert (await response.json())["message"] == "Request body is not valid JSON."
        async with http.post(speak, json={}, headers=headers) as response:
            assert response.status == 400
            assert (await response.json())["message"] == "Missing field 'message'."

        async with http.post(speak, json={"message": "Hi"}, headers=headers) as response:
            assert response.status == 503
            assert (await response.json())["error"] == "LIVEKIT_UNAVAILABLE"

        async with http.get(speak, headers=headers) as response:
            assert response.status == 405
            assert (await response.json())["error"] == "METHOD_NOT_ALLOWED"
        async with http.get(f"{base}/nope") as response:
            assert response.status == 404
            assert (await response.json())["error"] == "NOT_FOUND"
        async with http.get(f"{base}/openapi.json") as response:
            assert response.status == 200
            assert "/v1/agent/{agent_code}/speak" in (await response.json())["paths"]

    gateway_process.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(gateway_process.process.wait(), EXIT_TIMEOUT_S) == 0
    log = gateway_process.stderr()
    assert f"POST /v1/agent/{CODE}/speak 401" in log
    assert f"POST /v1/agent/{CODE}/add-context 400" in log
    assert SECRET not in log


@pytest.mark.parametrize(
    ("api_secret", "warning"),
    [
        # livekit-server --dev's own key pair: nobody chose it, nothing to say
        ("secret", None),
        ("short-secret", "warning: the LiveKit API secret is 12 bytes long; use 32 or more"),
    ],
)
async def test_a_short_api_secret_is_mentioned_once_and_livekits_dev_key_not_at_all(
    tmp_path: Path, api_secret: str, warning: str | None
) -> None:
    async with running_gateway(tmp_path, api_secret) as gateway:
        speak = f"{gateway.base_url}/v1/agent/{CODE}/speak"
        async with aiohttp.ClientSession() as http:
            for _ in range(2):  # each lookup signs a RoomService token
                async with http.post(
                    speak, json={"message": "Hi"}, headers={"api-secret": SECRET}
                ) as response:
                    assert response.status == 503
        gateway.process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(gateway.process.wait(), EXIT_TIMEOUT_S) == 0
    log = gateway.stderr()
    assert f"POST /v1/agent/{CODE}/speak 503" in log
    # PyJWT's own warning (two lines per token signed) never shows
    assert "InsecureKeyLengthWarning" not in log
    assert "HMAC key" not in log
    lines = [line for line in log.splitlines() if line.startswith("warning:")]
    if warning is None:
        assert lines == []
    else:
        assert len(lines) == 1
        assert lines[0].startswith(warning)


async def test_missing_configuration_fails_fast_with_a_clear_message() -> None:
    code, output = await run_to_exit(["gateway", "--port", str(free_port())], gateway_env())
    assert code != 0
    assert "The gateway is not configured" in output
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "IMAGINEX_API_SECRET"):
        assert name in output
    assert "Traceback" not in output


async def test_a_malformed_secrets_file_fails_fast_without_printing_secrets(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text("A12345678 hunter2-secret\n", encoding="utf-8")
    env = offline_env(
        IMAGINEX_API_SECRETS_FILE=str(secrets),
    )
    code, output = await run_to_exit(["gateway", "--port", str(free_port())], env)
    assert code != 0
    assert "line 1: expected 'agent_code=secret'" in output
    assert "hunter2" not in output
    assert "Traceback" not in output


async def test_replicas_without_a_signing_secret_refuse_to_start() -> None:
    env = offline_env(
        IMAGINEX_API_SECRET=SECRET,
    )
    args = ["gateway", "--port", str(free_port()), "--redis-url", "redis://127.0.0.1:1/0"]
    code, output = await run_to_exit(args, env)
    assert code != 0
    assert "need a signing secret (IMAGINEX_SIGNING_SECRET" in output
    assert "Traceback" not in output


async def test_an_unusable_sender_refuses_to_start() -> None:
    env = offline_env(
        IMAGINEX_API_SECRET=SECRET,
    )
    code, output = await run_to_exit(["gateway", "--port", str(free_port()), "--sender", ""], env)
    assert code != 0
    assert "--sender: sender must be 1 to 128 visible characters" in output
    assert "Traceback" not in output


async def test_a_replica_keeps_its_state_in_redis(tmp_path: Path, redis_url: str) -> None:
    from redis.asyncio import Redis

    port = free_port()
    stderr_path = tmp_path / "stderr.log"
    env = offline_env(
        IMAGINEX_API_SECRET=SECRET,
        IMAGINEX_SIGNING_SECRET="replica-signing-secret",
        IMAGINEX_REDIS_URL=redis_url,
    )
    args = ["gateway", "--port", str(port), "--rate-limit", "0.01", "--burst", "2"]
    with open_logs(tmp_path / "stdout.log", stderr_path) as (stdout, stderr):
        process = await asyncio.create_subprocess_exec(
            *command(), *args, env=env, stdout=stdout, stderr=stderr
        )
    running = Running(process, f"http://127.0.0.1:{port}", stderr_path)
    client = Redis.from_url(redis_url)
    try:
        await wait_until_serving(running)
        url = f"{running.base_url}/v1/agent/{CODE}/speak"
        statuses = []
        async with aiohttp.ClientSession() as http:
            for n in range(3):
                headers = {"api-secret": SECRET, "Idempotency-Key": f"p-{n}"}
                async with http.post(url, json={"message": "Hi"}, headers=headers) as reply:
                    statuses.append(reply.status)
        keys = {k.decode() for k in await client.keys("imaginex:*")}
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), EXIT_TIMEOUT_S) == 0
    finally:
        await client.aclose()
        if process.returncode is None:
            process.kill()
            await process.wait()
    # LiveKit is unreachable: the admitted calls are 503, the third is over the bucket kept in
    # Redis; the two keys stay bound to their requests (no answer kept: a retry may deliver)
    assert statuses == [503, 503, 429]
    assert "imaginex:rate:default" in keys
    assert len([k for k in keys if k.startswith("imaginex:idem:")]) == 2
    assert not any(k.endswith(":lease") for k in keys)
    assert "Traceback" not in running.stderr()


async def test_replicas_without_a_named_sender_refuse_to_start() -> None:
    env = offline_env(
        IMAGINEX_API_SECRET=SECRET,
        IMAGINEX_SIGNING_SECRET="replica-signing-secret",
    )
    args = [
        "gateway", "--port", str(free_port()), "--redis-url", "redis://127.0.0.1:1/0",
        "--no-sender",
    ]
    code, output = await run_to_exit(args, env)
    assert code != 0
    assert "must name one sender in their signed messages (--sender)" in output
    assert "Traceback" not in output


def without_uvloop(tmp_path: Path) -> dict[str, str]:
    """Environment values under which ``import uvloop`` fails, as where it is not installed
    (a module of that name, first on the path, that raises ImportError)."""
    blocker = tmp_path / "no-uvloop"
    blocker.mkdir(exist_ok=True)
    (blocker / "uvloop.py").write_text("raise ImportError('uvloop is not installed')\n")
    return {"PYTHONPATH": str(blocker)}


def runs_uvloop(process: asyncio.subprocess.Process) -> bool:
    """Whether uvloop's extension is loaded in ``process`` (Linux: its memory map)."""
    maps = Path(f"/proc/{process.pid}/maps").read_text(encoding="utf-8", errors="replace")
    return "uvloop" in maps


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")
@pytest.mark.parametrize(
    ("options", "blocked", "expected"),
    [
        ((), False, True),  # the default, auto, with uvloop installed ([dev] installs it)
        (("--event-loop", "uvloop"), False, True),
        (("--event-loop", "asyncio"), False, False),
        ((), True, False),  # auto without uvloop: asyncio's loop, and it serves
    ],
    ids=["auto", "uvloop", "asyncio", "auto-without-uvloop"],
)
async def test_the_gateway_serves_on_the_event_loop_chosen(
    tmp_path: Path, options: tuple[str, ...], blocked: bool, expected: bool
) -> None:
    pytest.importorskip("uvloop")
    env_values = without_uvloop(tmp_path) if blocked else {}
    async with running_gateway(tmp_path, DEV_SECRET, *options, **env_values) as running:
        async with aiohttp.ClientSession() as http, http.post(
            f"{running.base_url}/v1/agent/{CODE}/speak",
            json={"message": "hello"},
            headers={"api-secret": SECRET},
        ) as response:
            answer = await response.json()
        assert runs_uvloop(running.process) is expected
    # LiveKit is at a closed port: the request went all the way to delivery on this loop
    assert response.status == 503
    assert answer["error"] == "LIVEKIT_UNAVAILABLE"


async def test_uvloop_asked_for_where_it_is_missing_fails_fast(tmp_path: Path) -> None:
    env = offline_env(IMAGINEX_API_SECRET=SECRET, **without_uvloop(tmp_path))
    code, output = await run_to_exit(
        ["gateway", "--port", str(free_port()), "--event-loop", "uvloop"], env
    )
    assert code != 0
    assert "--event-loop uvloop needs uvloop, which is not installed" in output
    assert 'pip install "imaginex-context-plugin[uvloop]"' in output
    assert "Traceback" not in output
