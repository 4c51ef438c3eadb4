"""Stopping the processes the tests and benchmarks start (servers, workers, gateways), each in
its own session (``start_new_session=True``), so that nothing they forked outlives them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess


def stop_process(
    process: subprocess.Popen[bytes],
    *,
    timeout: float,
    first: signal.Signals = signal.SIGTERM,
    group: bool = False,
    reap_group: bool = False,
) -> None:
    """Stop ``process``: ``first`` (SIGTERM) to it, or with ``group`` to its whole process
    group, then SIGKILL to the group if it has not exited within ``timeout`` seconds. With
    ``reap_group`` the group gets SIGKILL afterwards in any case (children that must not
    outlive it, such as a worker's job processes)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, first)
            else:
                process.send_signal(first)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    if reap_group:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


async def stop_async_process(
    process: asyncio.subprocess.Process,
    *,
    timeout: float,
    first: signal.Signals | None = signal.SIGTERM,
    kill_group: bool = False,
) -> None:
    """Stop an asyncio subprocess: ``first`` (SIGTERM) to it while it runs (None: nothing, it
    was told to end another way), then SIGKILL, to its whole process group with
    ``kill_group``, if it has not exited within ``timeout`` seconds."""
    if first is not None and process.returncode is None:
        process.send_signal(first)
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except asyncio.TimeoutError:
        if kill_group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        await process.wait()


async def communicate_within(
    process: asyncio.subprocess.Process, timeout: float
) -> tuple[bytes, bytes]:
    """``process.communicate()`` (its stdout and stderr), its whole process group killed and
    ``asyncio.TimeoutError`` raised when ``timeout`` seconds pass first."""
    try:
        return await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
