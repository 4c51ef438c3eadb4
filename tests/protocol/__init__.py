"""The wire: the protocol models pinned, the shared fixtures, the signing and rate-limit rules."""
