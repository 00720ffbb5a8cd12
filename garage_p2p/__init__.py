"""Garage P2P: pool consumer GPUs into one peer-to-peer AI network."""

__version__ = "0.1.0"
