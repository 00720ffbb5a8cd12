"""Persistence under the peer's home directory."""
