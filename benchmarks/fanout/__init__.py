"""The parts of ``benchmarks/bench_fanout.py`` (the command users run), one concern a module:

- ``settings``: the run's constants, targets and names (no LiveKit import: ``capacity_model``
  reads the JSON's process groups from it);
- ``agents``: the rooms and the agent worker processes that sit in them;
- ``gateway``: the gateway process under test and its HTTP requests;
- ``measure``: CPU accounting, the fan-out floors and the gateway phases, block by block;
- ``one_size``: one size's rooms, from creating them to checking every speech;
- ``report``: the figures, printed and as data.

Nothing is imported here: ``bench_fanout.py`` enters the loopback-only network namespace before
anything imports LiveKit, and the modules that do are imported after it.
"""

from __future__ import annotations

__all__: list[str] = []
