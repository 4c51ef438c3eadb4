"""The gateway: its HTTP API, delivery, state and agent directory, in front of real agents."""
