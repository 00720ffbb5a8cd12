"""Private meshes: the libp2p swarm key file (``/key/swarm/psk/1.0.0/``).

Peers that hold the same 32-byte key encrypt every connection with it
before anything else is said; a peer without it cannot even complete a
handshake. The file is the format IPFS and go-libp2p use::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hex digits>

(py-libp2p 0.8.1 encrypts with Salsa20 and an 8-byte nonce, where go-libp2p
uses XSalsa20 and 24 bytes: a garage private mesh does not admit go-libp2p
peers even with the key.)
"""

from __future__ import annotations

import hashlib
import re

HEADER = "/key/swarm/psk/1.0.0/"
ENCODING = "/base16/"


class SwarmKeyError(ValueError):
    """A swarm key file that cannot be used; the message says what is wrong."""


def format_key(key: bytes) -> str:
    """The file's text for a 32-byte key."""
    if len(key) != 32:
        raise SwarmKeyError("a swarm key has 32 bytes")
    return f"{HEADER}\n{ENCODING}\n{key.hex()}\n"


def parse_key(text: str) -> bytes:
    """The 32-byte key in a swarm key file's text."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 3 or lines[0] != HEADER:
        raise SwarmKeyError(f"not a swarm key file: expected the lines {HEADER}, {ENCODING} and 64 hex digits")
    if lines[1] != ENCODING:
        raise SwarmKeyError(f"unsupported swarm key encoding {lines[1]!r} (only {ENCODING})")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", lines[2]):
        raise SwarmKeyError("a swarm key is 64 hex digits")
    return bytes.fromhex(lines[2])


def fingerprint(key: bytes) -> str:
    """A short, shareable name for a key (never the key)."""
    return hashlib.sha256(b"garage-swarm-key\n" + key).hexdigest()[:16]
