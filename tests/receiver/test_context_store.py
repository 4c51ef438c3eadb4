"""The context store: budget, keys, scopes, expiry and the one-pass merge into chat items."""

from __future__ import annotations

import pytest
from livekit.agents import llm

from imaginex_context_plugin import ContextBudget
from imaginex_context_plugin.context import ContextStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def texts(items: list[llm.ChatItem]) -> list[str]:
    return [i.text_content or "" for i in items if isinstance(i, llm.ChatMessage)]


def test_keyed_entries_replace_in_place_and_unkeyed_pile_up() -> None:
    store = ContextStore()
    store.add("a", key="k")
    store.add("b")
    store.add("c", key="k")
    store.add("d")
    assert [e.text for e in store.entries()] == ["c", "b", "d"]
    assert store.chars == 3


def test_budget_evicts_oldest_unkeyed_then_oldest_keyed() -> None:
    store = ContextStore(ContextBudget(max_entries=3, max_chars=100))
    store.add("k1", key="one")
    store.add("u1")
    store.add("k2", key="two")
    assert store.add("u2").evicted == 1
    assert [e.text for e in store.entries()] == ["k1", "k2", "u2"]
    store.add("k3", key="three")
    # only one unkeyed entry and it is not the newest: it goes first
    assert [e.text for e in store.entries()] == ["k1", "k2", "k3"]
    store.add("k4", key="four")
    assert [e.text for e in store.entries()] == ["k2", "k3", "k4"]


def test_character_budget() -> None:
    store = ContextStore(ContextBudget(max_entries=10, max_chars=10))
    store.add("aaaa")
    store.add("bbbb")
    store.add("cccc")
    assert [e.text for e in store.entries()] == ["bbbb", "cccc"]
    with pytest.raises(ValueError, match="budget of 10 characters"):
        store.add("x" * 11)


def test_expiry_and_next_expiry() -> None:
    clock = Clock()
    store = ContextStore(clock=clock)
    store.add("short", ttl_s=1)
    store.add("long", ttl_s=10)
    store.add("forever")
    assert store.next_expiry() == 101.0
    clock.now = 101.0
    assert store.expire() == 1
    assert [e.text for e in store.entries()] == ["long", "forever"]
    assert store.next_expiry() == 110.0


def test_remove_key() -> None:
    store = ContextStore()
    store.add("x", key="k")
    assert store.remove_key("k") is True
    assert store.remove_key("k") is False
    assert len(store) == 0


def test_merge_into_keeps_foreign_items_and_order() -> None:
    store = ContextStore()
    chat = llm.ChatContext.empty()
    chat.add_message(role="system", content="instructions")
    chat.add_message(role="user", content="hello")
    store.add("profile", key="p")
    merged = store.merge_into(chat.items)
    assert texts(merged) == ["instructions", "hello", "profile"]

    merged.append(llm.ChatMessage(role="assistant", content=["hi"]))
    store.add("profile v2", key="p")
    store.add("note")
    merged = store.merge_into(merged)
    assert texts(merged) == ["instructions", "hello", "profile v2", "hi", "note"]

    store.remove_key("p")
    merged = store.merge_into(merged + merged[-1:])  # a duplicated item is not kept twice
    assert texts(merged) == ["instructions", "hello", "hi", "note"]


def test_describe_reports_entries() -> None:
    clock = Clock()
    store = ContextStore(clock=clock)
    store.add("abc", key="k", role="developer", scope="next_turn", ttl_s=5, request_id="r")
    clock.now += 2
    [info] = store.describe()
    assert info.model_dump() == {
        "entry_id": "imaginex_ctx_key_k",
        "key": "k",
        "role": "developer",
        "chars": 3,
        "scope": "next_turn",
        "expires_in_s": 3.0,
        "request_id": "r",
    }


def test_rollback_undoes_adds_replacements_removals_and_evictions() -> None:
    clock = Clock()
    store = ContextStore(ContextBudget(max_entries=3, max_chars=100), clock=clock)
    store.add("one", key="a", ttl_s=5)
    store.add("two")
    store.add("three", key="c")
    before = [(e.entry_id, e.text, e.expires_at) for e in store.entries()]

    store.begin()
    store.add("ONE", key="a")  # replaced in place
    assert store.remove_key("c")
    store.add("four")
    store.add("five")  # evicts the unkeyed "two"
    store.add("three again", key="c")  # removed, then added back at the end
    store.rollback()

    assert [(e.entry_id, e.text, e.expires_at) for e in store.entries()] == before
    assert store.chars == len("one") + len("two") + len("three")
    assert store.next_expiry() == 105.0
    # and the store keeps working as before: the next unkeyed add evicts "two" only
    assert store.add("six").evicted == 1
    assert [e.text for e in store.entries()] == ["one", "three", "six"]


def test_commit_keeps_the_changes() -> None:
    store = ContextStore()
    store.add("one", key="a")
    store.begin()
    store.add("two", key="a")
    store.add("three")
    store.commit()
    store.rollback()  # nothing open: nothing to undo
    assert [e.text for e in store.entries()] == ["two", "three"]
