"""What protocol v1.3 costs on the hot path: today's receiver beside the v1.3 one, same run.

v1.3 numbers every event (``seq``, ``t_ms``), keeps it in a bounded buffer for resumes, and
tracks every context entry until a model request carries it (``context_used``) or it leaves
(``context_dropped``). On an add_context burst past the budget every message evicts an entry,
so every message makes an event: for a v1.2 sender it is only numbered and kept (built lazily,
if ever replayed); a v1.3 sender is sent it. A third sender names ``"protocol": "1.2"``: its
field is read but it is sent nothing more, which splits what a v1.3 sender costs beyond a v1.2
one into reading the field and the one extra packet per message. The packet's figure is the
plugin's share only (writing it, handing it to the outbox); ``publish_data`` itself, like every
transport's time here, is left out (the counting transport stands where it would be).

"Today's" is the receiver as it was before v1.3: its source, taken from git
(``BASELINE_REF``, ``git archive``), runs its own copy of ``bench_hot_path.measure`` in a
subprocess; the v1.3 receiver runs the same measure from this tree. The two take turns, round
after round (ABAB...), so that load coming and going on a shared machine falls on both alike;
the figures are medians over the rounds. Each measure is the hot path benchmark's own: a real
``AgentSession``, real ``rtc.DataPacket`` events, the plugin's own share of the time and the
total. The used-context detection runs once per model request, not per message: it is timed
apart, per request, on a chat context holding a full budget of entries.

Run: ``python benchmarks/bench_v13_cost.py [--rounds N] [--messages N] [--burst K]
[--baseline-ref REF]``. Without git history for the baseline ref (a shallow clone), the
comparison is skipped and said so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _harness import REPO_ROOT, Figure, Report, us

from imaginex_context_plugin.context import ContextBudget, ContextStore
from imaginex_context_plugin.protocol import PROTOCOL_VERSION

BASELINE_REF = "f309e03"
"""main just before protocol v1.3 (the merge of the TypeScript client)."""
TARGET_RATIO = 1.05
NAMES_V1_2 = "v1.3, sender naming protocol 1.2"
"""Sends ``"protocol": "1.2"``: its field is read, and it is sent no ``context_dropped``, so it
splits what a v1.3 sender costs into the field and the extra packet."""
"""v1.3 may cost at most 5% more on the add_context burst than today's receiver."""

# runs in a subprocess with one tree first on sys.path: that tree's package and benchmarks
_MEASURE = r"""
import asyncio, json, sys
tree, kind, protocol = sys.argv[1], sys.argv[2], sys.argv[5]
messages, burst = int(sys.argv[3]), int(sys.argv[4])
sys.path[:0] = [tree, tree + "/benchmarks"]
import _harness, bench_hot_path
base = _harness.context_payload if kind == "add_context" else _harness.speak_payload
def payload(n):
    if not protocol:
        return base(n)
    body = json.loads(base(n))
    body["protocol"] = protocol
    return json.dumps(body).encode()
hot = asyncio.run(bench_hot_path.measure(kind, payload, messages, burst))
import imaginex_context_plugin
print(json.dumps({"plugin": hot.plugin, "total": hot.total, "ok": hot.ok,
                  "package": imaginex_context_plugin.__file__}))
"""


@dataclass(frozen=True)
class Variant:
    label: str
    tree: Path
    kind: str
    protocol: str  # "" for a v1.2 sender


@dataclass
class Samples:
    plugin: list[float]
    total: list[float]
    ok: bool = True


def baseline_tree(ref: str, into: Path) -> Path | None:
    """The package and benchmarks as they were at ``ref``, or None without that history."""
    archive = into / "baseline.tar"
    done = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", "-o", str(archive), ref,
         "imaginex_context_plugin", "benchmarks", "devtools"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def measure_once(variant: Variant, messages: int, burst: int) -> dict[str, float | bool | str]:
    env = {**os.environ, "PYTHONPATH": f"{variant.tree}{os.pathsep}{variant.tree / 'benchmarks'}"}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(variant.tree), variant.kind, str(messages),
         str(burst), variant.protocol],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{variant.label}: {done.stderr[-2000:]}")
    result: dict[str, float | bool | str] = json.loads(done.stdout.strip().splitlines()[-1])
    if not str(result["package"]).startswith(str(variant.tree)):
        raise RuntimeError(f"{variant.label} ran {result['package']}, not its own tree")
    return result


def detection_cost(entries: int = 64, others: int = 40, calls: int = 2_000) -> float:
    """Seconds per model request that the used-context detection adds: the chat context of a
    request holding a full budget of entries among other messages, every entry already
    reported (the steady state: each is reported once, then only looked at)."""
    from livekit.agents import llm

    from imaginex_context_plugin.receiver.context_use import ContextUse

    store = ContextStore(ContextBudget(max_entries=entries))
    for n in range(entries):
        store.add(f"Customer note {n}: prefers email.", request_id=f"c{n}")
    items: list[llm.ChatItem] = [
        llm.ChatMessage(role="user", content=[f"message {n}"]) for n in range(others)
    ]
    items += [entry.message for entry in store.entries()]
    for entry in store.entries():
        entry.reported = True
    use = ContextUse.__new__(ContextUse)  # only its detection: no session, nothing sent
    use._store = store
    use._calls = 0
    t0 = time.perf_counter()
    for _ in range(calls):
        use.on_model_request(items, realtime=False)
    return (time.perf_counter() - t0) / calls


def run_sync(
    *, rounds: int = 7, messages: int = 4_000, burst: int = 100, baseline_ref: str = BASELINE_REF
) -> Report:
    report = Report("protocol v1.3 on the hot path, beside today's receiver (per message)")
    with tempfile.TemporaryDirectory(prefix="imaginex-v13-") as scratch:
        base = baseline_tree(baseline_ref, Path(scratch))
        if base is None:
            report.notes.append(
                f"baseline skipped: this clone has no history for {baseline_ref} "
                "(a shallow clone); run from a full clone"
            )
        variants: list[Variant] = []
        if base is not None:
            variants.append(Variant("today", base, "add_context", ""))
        variants += [
            Variant("v1.3, v1.2 sender", REPO_ROOT, "add_context", ""),
            Variant(NAMES_V1_2, REPO_ROOT, "add_context", "1.2"),
            Variant("v1.3, v1.3 sender", REPO_ROOT, "add_context", PROTOCOL_VERSION),
        ]
        if base is not None:
            variants.append(Variant("today: speak", base, "speak", ""))
        variants.append(Variant("v1.3: speak", REPO_ROOT, "speak", PROTOCOL_VERSION))
        samples = {v.label: Samples([], []) for v in variants}
        for round_no in range(rounds):
            # each round in another order: no variant always runs first, or after the same one
            turn = variants[round_no % len(variants):] + variants[: round_no % len(variants)]
            for variant in turn:
                count = messages if variant.kind == "add_context" else max(burst, messages // 4)
                result = measure_once(variant, count, burst)
                got = samples[variant.label]
                got.plugin.append(float(result["plugin"]))
                got.total.append(float(result["total"]))
                got.ok &= bool(result["ok"])
    report.ok = all(s.ok for s in samples.values())
    medians = {
        label: (statistics.median(s.plugin), statistics.median(s.total))
        for label, s in samples.items()
    }
    _compare(report, medians, "today", "v1.3, v1.2 sender", f"add_context burst of {burst}")
    _compare(report, medians, "today", NAMES_V1_2, f"add_context burst of {burst}", gated=False)
    _compare(report, medians, "today", "v1.3, v1.3 sender", f"add_context burst of {burst}")
    _split(report, medians)
    _compare(report, medians, "today: speak", "v1.3: speak", f"speak burst of {burst}", gated=False)
    per_request = detection_cost()
    report.add(
        Figure(
            "used-context detection, per model request (64 entries)", us(per_request),
            "", "", "", None,
        )
    )
    report.notes.append(
        f"{rounds} rounds, taking turns; medians. The add_context burst evicts one entry per "
        "message past the budget of 64: one context_dropped per message, kept (and, for a "
        "v1.3 sender, sent)."
    )
    return report


def _split(report: Report, medians: dict[str, tuple[float, float]]) -> None:
    """What a v1.3 sender costs beyond a v1.2 one, in two parts: reading its ``protocol``
    field (a sender naming 1.2 reads it and is sent nothing more) and the one extra packet per
    message (its ``context_dropped``: written and handed to the transport)."""
    v1_2, named, v1_3 = (
        medians[label][0] for label in ("v1.3, v1.2 sender", NAMES_V1_2, "v1.3, v1.3 sender")
    )
    report.add(Figure("  of which the protocol field (named 1.2 - v1.2)", us(named - v1_2), "", ""))
    report.add(
        Figure("  of which the context_dropped packet (v1.3 - named 1.2)", us(v1_3 - named), "", "")
    )


def _compare(
    report: Report,
    medians: dict[str, tuple[float, float]],
    before: str,
    after: str,
    what: str,
    *,
    gated: bool = True,
) -> None:
    if before not in medians:
        plugin = medians[after][0]
        report.add(Figure(f"{what}, {after}: plugin only", us(plugin), "", "", "", None))
        return
    for index, share in ((0, "plugin only"), (1, "total")):
        old, new = medians[before][index], medians[after][index]
        ratio = new / old
        target = gated and share == "plugin only"
        report.add(
            Figure(
                f"{what}, {after}: {share}",
                us(new),
                f"today {us(old)}",
                f"{ratio:.3f}x",
                f"<= {TARGET_RATIO:.2f}x" if target else "",
                ratio <= TARGET_RATIO if target else None,
            )
        )


async def run(**sizes: int | str) -> Report:
    """For ``run_all``: the subprocesses run off the event loop."""
    return await asyncio.to_thread(lambda: run_sync(**sizes))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=4_000)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    args = parser.parse_args(argv)
    report = run_sync(
        rounds=args.rounds, messages=args.messages, burst=args.burst,
        baseline_ref=args.baseline_ref,
    )
    report.print()
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
