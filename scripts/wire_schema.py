"""Print the JSON Schema of everything that travels: the wire protocol (``protocol.py``) and the
gateway's REST bodies and answers (``gateway/models.py``). It is the one source the TypeScript
client's types are generated from (``js/scripts/generate-types.mjs``)::

    .venv/bin/python scripts/wire_schema.py > js/schema/wire.schema.json
"""

from __future__ import annotations

import json
import sys

from imaginex_context_plugin.gateway.models import gateway_json_schemas
from imaginex_context_plugin.protocol import merged_json_schema, wire_json_schemas


def render() -> str:
    """The schema document as committed: sorted keys, two-space indent, a final newline."""
    schema = merged_json_schema(
        {**wire_json_schemas(), **gateway_json_schemas()}, title="ImaginexWire"
    )
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
