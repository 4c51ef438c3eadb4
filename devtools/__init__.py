"""Development tooling shared by the tests and the benchmarks; not part of the shipped package.

- ``livekit_server``: find (or build) a ``livekit-server`` and run it ``--dev`` on loopback;
- ``netns``: move the current process into a loopback-only network namespace before LiveKit
  is imported;
- ``processes``: stop a started process and its process group.

Both are used by ``tests/`` (the live suite, the root ``conftest.py``) and by ``benchmarks/``
(``bench_live.py``, ``run_all.py``): neither is a test, so neither lives in ``tests/``.
"""
