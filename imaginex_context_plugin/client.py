"""Compatibility module: the sender now lives in :mod:`imaginex_context_plugin.sender`.

``from imaginex_context_plugin.client import ContextClient`` (and every other name that was
public here) keeps working; new code imports from the package or from ``.sender``.
"""

from __future__ import annotations

from .sender import *  # noqa: F403  (the same public names, listed once in sender/__init__)
from .sender import __all__ as __all__
