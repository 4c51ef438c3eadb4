"""Rate limiting, the dedup window and signatures, with a controlled clock."""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaginex_context_plugin.expiring import ExpiringCache
from imaginex_context_plugin.security import (
    DEDUP_MAX_ENTRIES,
    DEDUP_MIN_ENTRIES,
    GIL_HELD_BYTES,
    RateLimit,
    RateLimiter,
    SenderPolicy,
    SignatureProblem,
    SignatureVerifier,
    compute_signature,
    hmac_sha256_hex,
    remembered_ids_capacity,
    sign_request,
)


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_refills() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(per_second=2, burst=3), clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # buckets are per sender
    clock.now += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(RateLimit(per_second=1, burst=1), max_senders=10, clock=Clock())
    for i in range(1_000):
        limiter.acquire(f"sender-{i}")
    assert len(limiter) == 10


def test_rate_limit_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="per_second"):
        RateLimit(per_second=0)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(burst=0)


def test_expiring_cache_expires_and_stays_bounded() -> None:
    clock = Clock()
    cache: ExpiringCache[int] = ExpiringCache(ttl_s=10, max_entries=3, clock=clock)
    cache.put("a", 1)
    clock.now += 5
    cache.put("b", 2)
    assert cache.get("a") == 1
    clock.now += 6
    assert cache.get("a") is None
    assert cache.get("b") == 2
    for key in "cdefg":
        cache.put(key, 0)
    assert len(cache) == 3
    assert "b" not in cache


def test_sender_policy_trusts_listed_participants_and_never_an_unsigned_anonymous_packet() -> None:
    policy = SenderPolicy.build(["backend"])
    assert policy.trusts("backend")
    assert not policy.trusts("user")
    # no participant: the server API, a hidden participant, or one not announced yet
    assert not policy.trusts(None)
    with pytest.raises(TypeError, match="list of identities"):
        SenderPolicy.build("backend")


def test_a_verifier_accepts_a_signature_by_any_of_its_keys() -> None:
    body = '{"type":"speak","message":"hi"}'
    verifier = SignatureVerifier("s3cret", also=["livekit-api-secret"], clock=Clock(1_700_000_000))
    by_server = sign_request(body, "livekit-api-secret", timestamp=1_700_000_000)
    by_shared = sign_request(body, "s3cret", timestamp=1_700_000_000)
    by_stranger = sign_request(body, "guess", timestamp=1_700_000_000)
    for envelope, problem in (
        (by_server, None),
        (by_shared, None),
        (by_stranger, SignatureProblem.MISMATCH),
    ):
        parsed = json.loads(envelope)
        assert verifier.verify(parsed["body"], parsed["timestamp"], parsed["signature"]) is problem


def test_signature_scheme_is_plain_hmac_sha256_over_timestamp_dot_body() -> None:
    body = '{"type":"speak","message":"hi"}'
    expected = hmac.new(b"s3cret", b"1700000000." + body.encode(), hashlib.sha256).hexdigest()
    assert compute_signature(body, 1700000000, "s3cret") == expected
    envelope = json.loads(sign_request(body, "s3cret", timestamp=1700000000))
    assert envelope == {
        "type": "signed", "body": body, "timestamp": 1700000000, "signature": expected
    }


def test_verifier_accepts_once_and_refuses_tampering_staleness_and_replay() -> None:
    clock = Clock(1_700_000_000)
    verifier = SignatureVerifier("s3cret", clock=clock)
    body = '{"type":"speak","message":"hi"}'
    sig = compute_signature(body, 1_700_000_000, "s3cret")

    assert verifier.verify(body + " ", 1_700_000_000, sig) == (
        "The signature does not match the message."
    )
    assert verifier.verify(body, 1_700_000_000, compute_signature(body, 1_700_000_000, "x")) == (
        "The signature does not match the message."
    )
    assert verifier.verify(body, 1_700_000_000, sig) is None
    assert verifier.verify(body, 1_700_000_000, sig) == (
        "This signed message was already received (replay)."
    )
    stale = compute_signature(body, 1_700_000_000 - 301, "s3cret")
    assert verifier.verify(body, 1_700_000_000 - 301, stale) == (
        "The signature timestamp is outside the allowed 5 minute window."
    )
    future = compute_signature(body, 1_700_000_000 + 299, "s3cret")
    assert verifier.verify(body, 1_700_000_000 + 299, future) is None


@pytest.mark.parametrize("signature", ["é" * 64, "\ud800", "ａ" * 64, ""])
def test_a_signature_that_is_not_hex_ascii_is_simply_wrong(signature: str) -> None:
    verifier = SignatureVerifier("s3cret", clock=Clock(1_700_000_000))
    assert verifier.verify("{}", 1_700_000_000, signature) is SignatureProblem.MISMATCH
    # a body that is not text cannot have been signed either
    sig = compute_signature("x", 1_700_000_000, "s3cret")
    assert verifier.verify("\ud800", 1_700_000_000, sig) is SignatureProblem.MISMATCH


def test_put_if_room_never_forgets_a_live_entry() -> None:
    clock = Clock()
    cache: ExpiringCache[int] = ExpiringCache(ttl_s=10, max_entries=2, clock=clock)
    assert cache.put_if_room("a", 1)
    clock.now += 4
    assert cache.put_if_room("b", 2)
    assert cache.free() == 0
    assert not cache.put_if_room("c", 3)
    assert cache.get("a") == 1  # still remembered: the newcomer was refused instead
    assert cache.seconds_until_room() == pytest.approx(6)
    clock.now += 6.1  # "a" has expired; "b" has not
    assert cache.put_if_room("c", 3)
    assert cache.get("a") is None
    assert cache.get("b") == 2
    assert cache.put_if_room("b", 9)  # full again, but an entry already there may be refreshed
    assert cache.get("b") == 9
    assert len(cache) == 2


def test_signatures_are_remembered_for_the_whole_window_or_refused() -> None:
    clock = Clock(1_700_000_000)
    verifier = SignatureVerifier("s3cret", clock=clock, max_remembered=2)

    def signed(body: str) -> tuple[str, int, str]:
        ts = int(clock.now)
        return body, ts, compute_signature(body, ts, "s3cret")

    first, second, third = signed("1"), signed("2"), signed("3")
    assert verifier.verify(*first) is None
    assert verifier.verify(*second) is None
    assert verifier.verify(*third) is SignatureProblem.FULL
    assert verifier.seconds_until_room() == pytest.approx(600)
    # the old one was not forgotten to make room: it is still a replay
    assert verifier.verify(*first) is SignatureProblem.REPLAYED
    clock.now += 600.5  # both expired (and now stale too)
    fresh = signed("3")
    assert verifier.verify(*fresh) is None


def test_tables_are_sized_from_the_rate_limit() -> None:
    assert remembered_ids_capacity(None, 600) == DEDUP_MAX_ENTRIES
    # 4 senders at 10/s for 600 s, plus their bursts
    assert remembered_ids_capacity(RateLimit(per_second=10, burst=50), 600) == 4 * 6_050
    assert remembered_ids_capacity(RateLimit(per_second=1, burst=1), 60) == DEDUP_MIN_ENTRIES
    assert remembered_ids_capacity(RateLimit(per_second=1_000, burst=1), 600) == (
        DEDUP_MAX_ENTRIES
    )


def test_a_sender_is_signed_in_its_own_domain_with_its_byte_length() -> None:
    body = '{"type":"speak","message":"hi"}'
    message = "imaginex-sender-v1.1700000000.7.gâte.x.".encode() + body.encode()
    expected = hmac.new(b"s3cret", message, hashlib.sha256).hexdigest()
    assert compute_signature(body, 1700000000, "s3cret", sender="gâte.x") == expected
    # the same text without the sender is the v1 scheme, whose signature differs
    assert compute_signature(body, 1700000000, "s3cret") != expected


def test_a_sender_that_is_not_text_is_simply_wrong() -> None:
    verifier = SignatureVerifier("s3cret", clock=Clock(1_700_000_000))
    sig = compute_signature("{}", 1_700_000_000, "s3cret", sender="x")
    assert verifier.verify("{}", 1_700_000_000, sig, sender="\ud800") is SignatureProblem.MISMATCH
    assert verifier.verify("{}", 1_700_000_000, sig, sender="x") is None


@given(
    body=st.text(),
    timestamp=st.integers(min_value=-(2**40), max_value=2**40),
    sender=st.none() | st.text(min_size=1),
)
def test_the_envelope_is_exactly_what_json_dumps_writes(
    body: str, timestamp: int, sender: str | None
) -> None:
    """``sign_request`` writes the envelope by hand (it runs once per room of a fan-out); the
    bytes are those of ``json.dumps`` of the same dict, whatever the text holds (quotes,
    controls, non-ASCII, lone surrogates)."""
    try:
        signature = compute_signature(body, timestamp, "s3cret", sender=sender)
    except UnicodeEncodeError:  # not text (a lone surrogate): nothing to sign, either way
        with pytest.raises(UnicodeEncodeError):
            sign_request(body, "s3cret", timestamp=timestamp, sender=sender)
        return
    envelope: dict[str, object] = {
        "type": "signed", "body": body, "timestamp": timestamp, "signature": signature
    }
    if sender is not None:
        envelope["sender"] = sender
    written = sign_request(body, "s3cret", timestamp=timestamp, sender=sender)
    assert written == json.dumps(envelope, separators=(",", ":"))


def test_the_envelope_with_a_sender_is_pinned() -> None:
    body = '{"type":"speak","message":"h\u00e9 \\"x\\""}'
    assert sign_request(body, "s3cret", timestamp=1700000000, sender="gate") == (
        '{"type":"signed","body":"{\\"type\\":\\"speak\\",\\"message\\":\\"h\\u00e9 '
        '\\\\\\"x\\\\\\"\\"}","timestamp":1700000000,"signature":"'
        + compute_signature(body, 1700000000, "s3cret", sender="gate")
        + '","sender":"gate"}'
    )


@given(key=st.binary(min_size=1, max_size=80), message=st.binary(max_size=3 * GIL_HELD_BYTES + 5))
def test_the_gil_holding_hmac_is_plain_hmac_sha256(key: bytes, message: bytes) -> None:
    expected = hmac.digest(key, message, "sha256").hex()
    assert hmac_sha256_hex(key, message) == expected
    keyed = hmac.new(key, digestmod="sha256")
    assert hmac_sha256_hex(keyed, message) == expected
    assert hmac_sha256_hex(keyed, message) == expected  # the keyed state is copied, not used up


def _hashes_letting_another_thread_run(sign: Callable[[bytes], object], times: int) -> int:
    """How many of ``times`` hashes of a 15 KB message let a spinning thread run."""
    message = b"x" * 15_000
    spins = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal spins
        while not stop.is_set():
            spins += 1

    interval = sys.getswitchinterval()
    # long enough that no forced switch falls inside a hash of microseconds
    sys.setswitchinterval(0.05)
    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    try:
        while spins == 0:
            time.sleep(0.001)
        ran = 0
        for _ in range(times):
            before = spins
            sign(message)
            ran += spins != before
        return ran
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(interval)


def test_checking_a_signature_does_not_hand_the_gil_to_other_threads() -> None:
    # in an agent's process LiveKit's FFI threads take a released GIL and the loop waits out
    # the switch interval to get it back, for a hash of microseconds (hmac_sha256_hex)
    key = b"k" * 32
    verifier = SignatureVerifier(key)
    assert _hashes_letting_another_thread_run(lambda m: hmac.digest(key, m, "sha256"), 3) >= 2
    assert _hashes_letting_another_thread_run(lambda m: hmac_sha256_hex(key, m), 50) <= 2
    assert (
        _hashes_letting_another_thread_run(
            lambda m: verifier.verify(m.decode(), 0, "0" * 64, sender="gw"), 50
        )
        <= 2
    )
