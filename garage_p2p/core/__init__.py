"""The pure core: protocol logic with no I/O, no clock and no global random.

Time comes in as ``now: float`` and randomness as a ``random.Random``; I/O is
what the callers do with the values returned. The daemon and the simulator
drive the same code.
"""
