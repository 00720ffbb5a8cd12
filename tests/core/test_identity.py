import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import Ed25519PrivateKey as Libp2pKey
from libp2p.peer.id import ID

from garage_p2p.core.identity import (
    Identity,
    IdentityError,
    peer_id_from_public_key,
    public_key_from_peer_id,
    verify,
)
from garage_p2p.store.identity_file import IdentityFileError, key_path, load_identity, load_or_create_identity


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_matches_libp2p(seed):
    identity = Identity.from_seed(seed)
    theirs = Libp2pKey.from_bytes(seed)
    assert identity.peer_id == str(ID.from_pubkey(theirs.get_public_key()))
    assert identity.peer_id.startswith("12D3KooW")
    assert public_key_from_peer_id(identity.peer_id) == identity.public_key


def test_serialisation_round_trips_in_both_libp2p_forms():
    identity = Identity.from_seed(os.urandom(32))
    assert Identity.from_libp2p_bytes(identity.to_libp2p_bytes()) == identity
    py_libp2p_form = Libp2pKey.from_bytes(identity.seed).serialize()
    assert Identity.from_libp2p_bytes(py_libp2p_form) == identity


def test_mismatched_halves_are_refused():
    a, b = Identity.from_seed(os.urandom(32)), Identity.from_seed(os.urandom(32))
    forged = a.to_libp2p_bytes()[:36] + b.public_key
    with pytest.raises(IdentityError, match="do not match"):
        Identity.from_libp2p_bytes(forged)


def test_sign_and_verify():
    identity = Identity.from_seed(os.urandom(32))
    sig = identity.sign(b"message")
    assert verify(identity.public_key, sig, b"message")
    assert not verify(identity.public_key, sig, b"massage")
    assert not verify(identity.public_key, sig[:-1] + bytes([sig[-1] ^ 1]), b"message")
    assert not verify(b"short", sig, b"message")


def test_not_a_peer_id():
    with pytest.raises(IdentityError):
        public_key_from_peer_id("0OIl")
    with pytest.raises(IdentityError):
        public_key_from_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # sha256 id, no key
    with pytest.raises(IdentityError):
        peer_id_from_public_key(b"\0" * 31)


def test_identity_file_created_once_with_mode_0600(tmp_path):
    identity, created = load_or_create_identity(tmp_path / "home")
    assert created
    path = key_path(tmp_path / "home")
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    again, created_again = load_or_create_identity(tmp_path / "home")
    assert (again, created_again) == (identity, False)
    assert path.read_bytes() == before


def test_corrupt_identity_file_is_an_error_and_never_overwritten(tmp_path):
    path = key_path(tmp_path)
    path.write_bytes(b"not a key")
    with pytest.raises(IdentityFileError, match="not a valid identity key"):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == b"not a key"


def test_missing_identity_names_the_fix(tmp_path):
    with pytest.raises(IdentityFileError, match="garage init"):
        load_identity(tmp_path)
