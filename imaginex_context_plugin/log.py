from __future__ import annotations

import logging

logger = logging.getLogger("imaginex_context_plugin")
