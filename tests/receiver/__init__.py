"""The receiver: ContextPlugin on a real AgentSession, its admission, queue, answers and events."""
