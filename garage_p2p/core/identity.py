"""Ed25519 identities, libp2p peer ids, signing and verifying.

Keys are kept in libp2p's own serialisation (the protobuf ``PrivateKey`` with
64 bytes of seed||public key) so the same file drives the libp2p host and our
signatures. Peer ids are libp2p's: base58 of an identity multihash over the
protobuf ``PublicKey``, which embeds the key, so a peer id alone is enough to
verify its signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .base58 import b58decode, b58encode

# protobuf tags: field 1 (KeyType, varint), field 2 (Data, bytes); KeyType Ed25519 = 1
_ED25519_PUBLIC_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])
_ED25519_PRIVATE_PREFIX = bytes([0x08, 0x01, 0x12, 0x40])
_ED25519_SEED_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])  # py-libp2p writes the bare seed
_IDENTITY_MULTIHASH = 0x00


class IdentityError(ValueError):
    """A key or peer id that cannot be parsed."""


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer id (``12D3KooW…``) of a raw 32-byte ed25519 public key."""
    if len(public_key) != 32:
        raise IdentityError("an ed25519 public key has 32 bytes")
    proto = _ED25519_PUBLIC_PREFIX + public_key
    return b58encode(bytes([_IDENTITY_MULTIHASH, len(proto)]) + proto)


def public_key_from_peer_id(peer_id: str) -> bytes:
    """The raw ed25519 public key embedded in a peer id; IdentityError if none."""
    try:
        raw = b58decode(peer_id)
    except ValueError as exc:
        raise IdentityError(f"not a peer id: {exc}") from None
    proto = raw[2:]
    if (
        len(raw) != 2 + 36
        or raw[0] != _IDENTITY_MULTIHASH
        or raw[1] != 36
        or not proto.startswith(_ED25519_PUBLIC_PREFIX)
    ):
        raise IdentityError("not an ed25519 peer id")
    return proto[4:]


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``public_key``'s signature of ``message``."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """A peer's ed25519 key pair."""

    seed: bytes
    """The 32-byte private seed."""

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Build from 32 secret bytes (the caller brings the randomness: ``os.urandom(32)``)."""
        if len(seed) != 32:
            raise IdentityError("an ed25519 seed has 32 bytes")
        return cls(seed)

    @classmethod
    def from_libp2p_bytes(cls, data: bytes) -> Identity:
        """Parse libp2p's serialised private key (the identity file's contents).

        Accepts the spec's 64-byte form (seed||public, as go-libp2p writes it)
        and py-libp2p's 32-byte seed form.
        """
        if len(data) == 4 + 32 and data.startswith(_ED25519_SEED_PREFIX):
            return cls(data[4:])
        if len(data) != 4 + 64 or not data.startswith(_ED25519_PRIVATE_PREFIX):
            raise IdentityError("not a libp2p ed25519 private key")
        seed, public = data[4:36], data[36:]
        identity = cls(seed)
        if identity.public_key != public:
            raise IdentityError("private key and public key do not match")
        return identity

    def to_libp2p_bytes(self) -> bytes:
        """libp2p's serialised private key: protobuf with seed||public key."""
        return _ED25519_PRIVATE_PREFIX + self.seed + self.public_key

    # Cached: building the key object costs ~45 µs and the base58 peer id more,
    # and every signature and every log line asked for them again.
    @cached_property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @cached_property
    def public_key(self) -> bytes:
        """The raw 32-byte public key."""
        return _raw_public(self._private.public_key())

    @cached_property
    def peer_id(self) -> str:
        """The libp2p peer id, ``12D3KooW…``."""
        return peer_id_from_public_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte ed25519 signature of ``message``."""
        return self._private.sign(message)

    def __repr__(self) -> str:  # never print the seed
        return f"Identity({self.peer_id})"
