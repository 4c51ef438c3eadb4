"""One listener of ours per emitter and event (``receiver/listeners.py``), on LiveKit's real
``EventEmitter``: what each part hears, in which order, and that one failing part does not
silence the others."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import pytest
from livekit import rtc

from imaginex_context_plugin.receiver.listeners import EventListeners, grouped


class Part:
    def __init__(self, name: str, heard: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.name, self.heard = name, heard

    def on_one(self, event: object) -> None:
        self.heard.append((self.name, (event,)))

    def on_none(self) -> None:
        self.heard.append((self.name, ()))

    def on_all(self, *args: object) -> None:
        self.heard.append((self.name, args))

    def on_fail(self, event: object) -> None:
        raise RuntimeError("this part is broken")


def test_each_part_hears_the_arguments_it_takes_in_hook_order() -> None:
    emitter: rtc.EventEmitter[str] = rtc.EventEmitter()
    heard: list[tuple[str, tuple[Any, ...]]] = []
    a, b, c = Part("a", heard), Part("b", heard), Part("c", heard)
    hooks = [
        (emitter, "x", a.on_one),
        (emitter, "y", b.on_one),
        (emitter, "x", b.on_none),
        (emitter, "x", c.on_all),
    ]
    groups = grouped(hooks)
    assert [(event, len(listeners)) for _, event, listeners in groups] == [("x", 3), ("y", 1)]
    for em, event, listeners in groups:
        em.on(event, listeners)

    emitter.emit("x", 1, 2)
    emitter.emit("y", "why")
    assert heard == [("a", (1,)), ("b", ()), ("c", (1, 2)), ("b", ("why",))]

    for em, event, listeners in groups:
        em.off(event, listeners)
    emitter.emit("x", 3)
    assert len(heard) == 4


def test_one_part_failing_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter: rtc.EventEmitter[str] = rtc.EventEmitter()
    heard: list[tuple[str, tuple[Any, ...]]] = []
    broken, fine = Part("broken", heard), Part("fine", heard)
    [(_, _, listeners)] = grouped([(emitter, "x", broken.on_fail), (emitter, "x", fine.on_one)])
    emitter.on("x", listeners)
    with caplog.at_level(logging.ERROR, logger="imaginex_context_plugin"):
        emitter.emit("x", "e")
    assert heard == [("fine", ("e",))]
    [record] = [r for r in caplog.records if r.getMessage() == "a receiver listener failed"]
    assert record.__dict__["event"] == "x"


def test_the_emitter_finds_the_signature_ready_made() -> None:
    """Why the group exists: ``EventEmitter.emit`` calls ``inspect.signature`` per listener per
    emit; for the group it must be the ready-made one, not one built from a function."""
    group = EventListeners("x", [Part("a", []).on_one])
    assert inspect.signature(group) is EventListeners.__signature__
    assert list(inspect.signature(group).parameters) == ["args"]
