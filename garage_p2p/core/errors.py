"""The two error families.

``PeerFault``: a remote peer sent something wrong (bad bytes, a forged
signature, a frame too large). The caller rejects it, penalises the peer and
carries on. Anything else raised from the core is our own bug and must crash
loudly.
"""


class PeerFault(Exception):
    """Input from the network broke the protocol; the sender is to blame."""
