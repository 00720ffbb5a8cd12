"""Tools for developing and measuring Garage P2P; not used by a running peer."""
