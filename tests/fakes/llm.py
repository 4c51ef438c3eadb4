"""``UnreachableLLM``: a model whose provider is down, for the ``llm_error`` outcomes."""

from __future__ import annotations

from typing import Any

from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectionError, APIConnectOptions

from imaginex_context_plugin.testing import ScriptedLLM, ScriptedLLMStream


class _UnreachableStream(ScriptedLLMStream):
    async def _run(self) -> None:
        raise APIConnectionError("the LLM provider is down", retryable=False)


class UnreachableLLM(ScriptedLLM):
    """Every request fails the way a provider that cannot be reached does (not retried)."""

    def chat(
        self,
        *,
        chat_ctx: Any,
        tools: Any = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> ScriptedLLMStream:
        return _UnreachableStream(
            self, reply="", chunks=1, chat_ctx=chat_ctx, tools=[], conn_options=conn_options
        )
